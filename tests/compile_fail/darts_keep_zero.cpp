// expect-error: A darts_cell must keep at least one input per node
#include "tnas/space/cell.hpp"

using namespace tnas::space;
static_assert(darts_cell<DartsOps, 4, 0>::edges == 14);
