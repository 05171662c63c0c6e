// expect-error: A darts_cell cannot keep more than 2 inputs per node: its first node has only
// Node 0 reads only c_{k-2} and c_{k-1}, so it cannot keep three inputs.
#include "tnas/space/cell.hpp"

using namespace tnas::space;
static_assert(darts_cell<DartsOps, 4, 3>::edges == 14);
