// expect-error: (constraint failure for .*Operator<Ops>|does not satisfy 'Operator')
// op_set's parameters must satisfy the op::Operator concept; the diagnostic names it (GCC and
// Clang word it differently).
#include "tnas/space/op_set.hpp"

struct NotAnOp {};
static_assert(tnas::space::op_set<tnas::op::none, NotAnOp>::size == 2);
