// expect-error: An nb201_cell needs at least two nodes
#include "tnas/space/cell.hpp"

using namespace tnas::space;
static_assert(nb201_cell<Nb201Ops, 1>::edges == 0);
