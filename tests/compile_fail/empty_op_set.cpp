// expect-error: An op_set needs at least one operator\.
// An edge with no candidate ops is not a search space.
#include "tnas/space/op_set.hpp"

static_assert(tnas::space::op_set<>::size == 0);
