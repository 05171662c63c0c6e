// expect-error: A pooling window must have an odd size
// An even window cannot keep the spatial size with symmetric padding.
#include "tnas/space/op_set.hpp"

static_assert(tnas::op::max_pool<2>::name.size() > 0);
