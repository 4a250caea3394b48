// Must NOT compile: an estimator policy without kKind/kM/kHard. The error must name the
// EstimatorPolicy concept.
#include "datanas/spaces/supernet.hpp"

struct HalfEstimator {
  static constexpr std::string_view kName = "half";
};
using Broken = datanas::spaces::SearchSpace<datanas::spaces::DartsOps, 4, 4, HalfEstimator>;
int main() { return Broken::kNodes; }
