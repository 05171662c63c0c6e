// expect-error: A darts_cell needs an op other than none
// Derivation drops none, so an op set of none alone derives nothing.
#include "tnas/space/cell.hpp"

using namespace tnas::space;
static_assert(darts_cell<op_set<tnas::op::none>>::edges == 14);
