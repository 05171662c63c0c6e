// expect-error: A darts_cell needs at least one intermediate node
#include "tnas/space/cell.hpp"

using namespace tnas::space;
static_assert(darts_cell<DartsOps, 0, 2>::edges == 0);
