// Must NOT compile: an op descriptor without a factory. The error must name the OpDescriptor concept.
#include "datanas/spaces/darts_ops.hpp"

struct NoFactory {
  static constexpr std::string_view kName = "no_factory";
};
using Broken = datanas::spaces::OpSet<datanas::spaces::NoneOp, NoFactory>;
int main() { return Broken::kSize; }
