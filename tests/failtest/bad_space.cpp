// Must NOT compile: a cell whose output concatenates more nodes than it has. The error must
// carry the static_assert message about Multiplier.
#include "datanas/spaces/supernet.hpp"

using Broken = datanas::spaces::SearchSpace<datanas::spaces::DartsOps, 3, 5, datanas::estimators::EGS<4>>;
int main() { return Broken::kNodes; }
