// expect-error: An op_set lists two operators with the same name
// The same operator twice would give an edge two indistinguishable candidates.
#include "tnas/space/op_set.hpp"

using namespace tnas;
static_assert(space::op_set<op::skip, op::sep_conv<3>, op::skip>::size == 3);
