// expect-error: darts_cell's first argument must be an op_set
#include "tnas/space/cell.hpp"

using namespace tnas;
static_assert(space::darts_cell<op::sep_conv<3>>::edges == 14);
