// expect-error: Nb201Genotype holds the 6 edges of a 4-node cell
// Nb201Genotype is the fixed 6-edge NB201 cell; a 5-node space needs another genotype type.
#include "tnas/space/genotype.hpp"

using namespace tnas::space;
void f(const Nb201Genotype& g) {
  g.validate<nb201_cell<Nb201Ops, 5>>();
}
