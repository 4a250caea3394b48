// datanas-search: differentiable architecture search on the DARTS CNN space with any of the
// estimators (DATA's EGS by default), on Fashion-MNIST or CIFAR-10.
//
// The runtime flags (estimator, M, granularity, nodes) map onto compile-time search spaces at
// exactly one place, with_space() below.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "datanas/data/cifar10.hpp"
#include "datanas/datanas.hpp"
#include "datanas/io/args.hpp"
#include "datanas/io/device.hpp"
#include "datanas/io/files.hpp"
#include "datanas/io/json.hpp"
#include "datanas/io/run.hpp"
#include "datanas/search/searcher.hpp"

using namespace datanas;
namespace fs = std::filesystem;

namespace {

struct Options {
  std::string dataset = "fashion-mnist", data_dir;
  std::string estimator = "egs", granularity = "node", normalize = "softmax", derive = "auto";
  long M = 4, order = 1, epochs = 3, batch_size = 64, init_channels = 8, layers = 5, nodes = 4;
  long train_limit = 2000, stop_after = 0;
  double lr = 0.025, arch_lr = 3e-4, l1 = 0.0;
  bool sparse = false, resume = false, dry_run = false, cuda_graph = false;
  std::uint64_t seed = 1;
  std::string out = "out/search";
  std::string device = "cpu";
  std::string depthwise = "cudnn";

  /// The flags that fix the network and the data: a checkpoint only resumes under the same.
  [[nodiscard]] std::string identity() const {
    std::ostringstream s;
    s << "dataset=" << dataset << " estimator=" << estimator << " M=" << M << " granularity=" << granularity
      << " normalize=" << normalize << " init_channels=" << init_channels << " layers=" << layers
      << " nodes=" << nodes << " batch_size=" << batch_size << " train_limit=" << train_limit
      << " order=" << order << " sparse=" << sparse << " seed=" << seed << " epochs=" << epochs
      << " lr=" << lr << " arch_lr=" << arch_lr << " l1=" << l1;
    return s.str();
  }
};

struct Data {
  data::LabelledImages train;
  std::vector<float> mean, std;
  int classes = 10;
  int crop_pad = 0;
};

Data load_data(const Options& o) {
  Data d;
  if (o.dataset == "fashion-mnist") {
    auto fm = data::FashionMnist::load(o.data_dir.empty() ? data::FashionMnist::kDefaultDir : o.data_dir);
    d.train = std::move(fm.train);
    d.mean = {data::FashionMnist::kMean};
    d.std = {data::FashionMnist::kStd};
  } else {
    data::Cifar10::Options co;
    co.train_limit = o.train_limit > 0 ? o.train_limit : -1;
    co.test_limit = 0;
    auto c = data::Cifar10::load(o.data_dir.empty() ? "../shared/data/cifar10" : o.data_dir, co);
    d.train = std::move(c.train);
    d.mean.assign(data::Cifar10::kMean.begin(), data::Cifar10::kMean.end());
    d.std.assign(data::Cifar10::kStd.begin(), data::Cifar10::kStd.end());
    d.crop_pad = 4;
  }
  d.train = data::head(d.train, o.train_limit);
  return d;
}

/// {"normal": [[p per op] per edge], "reduce": [...]}: the estimator's probabilities (softmax
/// or relu per group), 4 decimals.
template <class T, class D>
std::string probabilities_json(const spaces::SearchNetwork<T, D>& net, search::Normalize normalize) {
  NoGradGuard ng;
  PhiloxGenerator unused(0);
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(4);
  s << '{';
  const char* names[] = {"normal", "reduce"};
  int which = 0;
  for (const Var<T, D>* a : {&net.alpha_normal(), &net.alpha_reduce()}) {
    const auto layout = net.layout();
    auto p = to_cpu(estimators::group_probabilities(*a, layout, normalize, unused).value());
    s << (which ? ", " : "") << '"' << names[which] << "\": [";
    for (int e = 0; e < layout.edges(); ++e) {
      s << (e ? ", [" : "[");
      for (int k = 0; k < layout.ops; ++k) s << (k ? ", " : "") << p[e * layout.ops + k];
      s << ']';
    }
    s << ']';
    ++which;
  }
  s << '}';
  return s.str();
}

search::DeriveRule derive_rule(const Options& o) {
  if (o.derive == "darts") return search::DeriveRule::kDarts;
  if (o.derive == "argmax") return search::DeriveRule::kArgmax;
  if (o.derive == "data") return search::DeriveRule::kData;
  return o.estimator == "egs" ? search::DeriveRule::kData : search::DeriveRule::kDarts;
}

/// Everything after the network is built: compiled once per device, whatever the search space.
template <class D>
int search_with(spaces::SearchNetwork<float, D>& net, const Options& o, const Data& d, search::Normalize normalize) {
  using T = float;
  search::SearchConfig sc;
  sc.epochs = o.epochs;
  sc.batch_size = o.batch_size;
  sc.lr = o.lr;
  sc.arch_lr = o.arch_lr;
  sc.l1 = o.l1;
  sc.order = int(o.order);
  sc.sparse = o.sparse;
  sc.cuda_graph = o.cuda_graph;
  sc.single_level = o.estimator == "snas";
  sc.tau = estimators::default_schedule(net.estimator_kind());
  sc.crop_pad = d.crop_pad;
  sc.seed = o.seed;
  data::ChannelNorm norm{d.mean, d.std};
  search::Searcher<T, D> searcher(net, d.train, norm, sc);
  searcher.set_normalize(normalize);

  const std::string ckpt_path = o.out + "/checkpoint", log_path = o.out + "/log.csv";
  if (auto ck = io::open_run(o.out, o.resume, o.identity(),
                             "epoch,train_loss,train_acc,arch_loss,arch_acc,lr,tau,seconds,images_per_second,genotype,"
                             "alpha_probabilities")) {
    searcher.restore(*ck);
    std::printf("resumed from %s at epoch %ld of %ld\n", ckpt_path.c_str(), searcher.epoch(), o.epochs);
  }
  std::printf("search: %s, %ld training images (%ld weight / %ld architecture), estimator %s%s, "
              "granularity %s, %s order, %d threads; supernet %.6fM weights\n",
              o.dataset.c_str(), long(d.train.size()), long(searcher.held_out_begin()),
              long(d.train.size() - searcher.held_out_begin()), o.estimator.c_str(),
              o.estimator == "egs" ? (" M=" + std::to_string(o.M)).c_str() : "", o.granularity.c_str(),
              o.order == 1 ? "first" : "second", cpu::num_threads(), double(net.parameter_count()) / 1e6);

  const auto names = net.op_names();
  search::DeriveOptions dopt;
  dopt.rule = derive_rule(o);
  dopt.M = int(o.M);
  dopt.normalize = normalize;
  dopt.granularity = net.layout().granularity;
  dopt.nodes = net.layout().nodes;
  auto derive_now = [&] { return search::derive(searcher.alpha_pair(), names, dopt); };

  long ran = 0;
  while (searcher.epoch() < o.epochs) {
    io::ProgressBar bar("epoch " + std::to_string(searcher.epoch() + 1) + "/" + std::to_string(o.epochs),
                        searcher.steps_per_epoch());
    const auto st = searcher.run_epoch(&bar);
    const search::Genotype g = derive_now();
    std::printf("epoch %ld: train loss %.4f acc %.2f%% | arch loss %.4f acc %.2f%% | lr %.5f tau %.3f | %.0f img/s\n"
                "  genotype = %s\n",
                st.epoch, st.train_loss, 100 * st.train_acc, st.arch_loss, 100 * st.arch_acc, st.lr, st.tau,
                st.images_per_second, search::to_text(g).c_str());
    std::ostringstream row;
    row << st.epoch << ',' << st.train_loss << ',' << st.train_acc << ',' << st.arch_loss << ',' << st.arch_acc
        << ',' << st.lr << ',' << st.tau << ',' << st.seconds << ',' << st.images_per_second << ','
        << io::csv_quote(search::to_text(g)) << ',' << io::csv_quote(probabilities_json(net, normalize));
    io::append_line(log_path, row.str());
    io::Checkpoint ck(ckpt_path);
    searcher.save(ck);
    ck.put("flags", o.identity());
    ck.save_atomic(ckpt_path);
    ++ran;
    if (o.stop_after > 0 && ran >= o.stop_after && searcher.epoch() < o.epochs) {
      std::printf("stopped after %ld epoch(s) of this run; continue with --resume\n", ran);
      break;
    }
  }

  const search::Genotype g = derive_now();
  io::write_text_file(o.out + "/genotype.txt", search::to_text(g) + "\n");
  io::write_text_file(o.out + "/genotype.json", search::to_json(g) + "\n");
  io::write_text_file(o.out + "/alpha.json", search::alpha_to_json(searcher.alpha_pair()) + "\n");
  io::write_text_file(o.out + "/cells.dot", search::to_dot(g));
  if (std::system("command -v dot >/dev/null 2>&1") == 0) {
    const std::string cmd = "dot -Tpng '" + o.out + "/cells.dot' -o '" + o.out + "/cells.png'";
    if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "warning: %s failed\n", cmd.c_str());
  }
  if (searcher.epoch() < o.epochs) return 0;

  // The search-to-child gap (the paper's Table 8) on the held-out architecture half.
  const double e_super = searcher.supernet_error();
  const double e_child = searcher.child_error(g);
  std::printf("held-out error: supernet (estimator's distribution) %.2f%%, derived child (inherited weights, "
              "BN recomputed) %.2f%%, gap %+.2f points\n",
              100 * e_super, 100 * e_child, 100 * (e_child - e_super));
  std::printf("genotype = %s\n", search::to_text(g).c_str());
  io::Json summary = io::Json::object();
  summary["supernet_error"] = e_super;
  summary["child_error"] = e_child;
  summary["gap"] = e_child - e_super;
  summary["genotype"] = search::to_text(g);
  summary["estimator"] = o.estimator;
  summary["epochs"] = double(o.epochs);
  summary["flags"] = o.identity();
  io::write_text_file(o.out + "/summary.json", summary.dump() + "\n");
  std::printf("wrote %s/{genotype.txt,genotype.json,alpha.json,cells.dot,log.csv,checkpoint,summary.json}\n",
              o.out.c_str());
  return 0;
}

template <class Space>
int run(const Options& o) {
  PhiloxGenerator init_gen(o.seed);
  Data d = o.dry_run ? Data{} : load_data(o);
  const auto normalize = o.normalize == "relu" ? search::Normalize::kRelu : search::Normalize::kSoftmax;
  spaces::SupernetConfig nc{.init_channels = o.init_channels, .layers = int(o.layers),
                            .in_channels = o.dataset == "fashion-mnist" ? 1 : 3, .num_classes = 10,
                            .normalize = normalize};
  auto go = [&]<class D>() {
    spaces::Supernet<float, Space, D> net(nc, init_gen);
    if (o.dry_run) {
      std::printf("param size = %.6fMB\n", double(net.parameter_count()) / 1e6);
      return 0;
    }
    return search_with<D>(net, o, d, normalize);
  };
  return io::with_device(o.device, go);
}

/// The one runtime-to-compile-time switch: estimator x M x granularity (estimators::with_estimator)
/// x nodes.
template <class F>
int with_space(const Options& o, F&& f) {
  using spaces::DartsOps;
  using spaces::SearchSpace;
  auto by_nodes = [&]<class E, search::Granularity G>() -> int {
    switch (o.nodes) {
      case 2: return f.template operator()<SearchSpace<DartsOps, 2, 2, E, G>>();
      case 3: return f.template operator()<SearchSpace<DartsOps, 3, 3, E, G>>();
      case 4: return f.template operator()<SearchSpace<DartsOps, 4, 4, E, G>>();
      case 5: return f.template operator()<SearchSpace<DartsOps, 5, 5, E, G>>();
    }
    throw error(detail::concat("--nodes: ", o.nodes, " is not supported (2 to 5)"));
  };
  return estimators::with_estimator(o.estimator, o.M, o.granularity, by_nodes);
}

}  // namespace

int main(int argc, char** argv) try {
  Options o;
  io::ArgParser args("datanas-search",
                     "Differentiable architecture search (DATA/EGS, DARTS, SNAS, GDAS) on the DARTS CNN space.\n"
                     "Writes OUT/{genotype.txt,genotype.json,alpha.json,cells.dot,log.csv,checkpoint,summary.json}.");
  args.add_choice("dataset", &o.dataset, {"fashion-mnist", "cifar10"}, "data set")
      .add("data-dir", &o.data_dir, "data directory (default: the Debian Fashion-MNIST package, or ../shared/data/cifar10)")
      .add_choice("estimator", &o.estimator, {"softmax", "snas", "gdas", "egs"}, "architecture estimator")
      .add("M", &o.M, "EGS ensemble size (1 to 8)")
      .add_choice("granularity", &o.granularity, {"edge", "node"}, "sampling groups")
      .add_choice("normalize", &o.normalize, {"softmax", "relu"}, "alpha -> probabilities")
      .add("sparse", &o.sparse, "run only the sampled ops (gdas, egs)")
      .add("order", &o.order, "1: first order; 2: DARTS second order")
      .add("l1", &o.l1, "coefficient of DATA's L1 term |p - code| (0 = off)")
      .add_choice("derive", &o.derive, {"auto", "darts", "argmax", "data"}, "derivation rule (auto: data for egs, else darts)")
      .add("epochs", &o.epochs, "total epochs (defines the schedules)")
      .add("batch-size", &o.batch_size, "batch size")
      .add("lr", &o.lr, "weight learning rate (cosine to 0.001)")
      .add("arch-lr", &o.arch_lr, "architecture (Adam) learning rate")
      .add("init-channels", &o.init_channels, "C of the first cells")
      .add("layers", &o.layers, "cells")
      .add("nodes", &o.nodes, "intermediate nodes per cell (2 to 5)")
      .add("train-limit", &o.train_limit, "use only the first N training images (0 = all)")
      .add("seed", &o.seed, "random seed")
      .add_choice("device", &o.device, {"cpu", "cuda"}, "where the search runs (a checkpoint resumes on either)")
      .add("cuda-graph", &o.cuda_graph, "replay each epoch's step as a CUDA graph (--device cuda, dense steps)")
      .add_choice("depthwise", &o.depthwise, {"cudnn", "own"},
                  "depthwise convolutions on cuDNN or on datanas' kernels (--device cuda)")
      .add("out", &o.out, "output directory")
      .add("resume", &o.resume, "continue from OUT/checkpoint")
      .add("stop-after", &o.stop_after, "stop cleanly after N epochs of this run (0 = never)")
      .add("dry-run", &o.dry_run, "build the supernet, print its parameter size, exit");
  if (!args.parse(argc, argv, std::cout)) return 0;
  DATANAS_CHECK(o.epochs >= 1, "--epochs must be >= 1, got ", o.epochs);
  DATANAS_CHECK(o.batch_size >= 1, "--batch-size must be >= 1, got ", o.batch_size);
  DATANAS_CHECK(o.init_channels >= 2 && o.init_channels % 2 == 0, "--init-channels must be even and >= 2, got ",
                o.init_channels);
  DATANAS_CHECK(o.layers >= 1, "--layers must be >= 1, got ", o.layers);
  DATANAS_CHECK(o.train_limit >= 0, "--train-limit must be >= 0, got ", o.train_limit);
  DATANAS_CHECK(o.stop_after >= 0, "--stop-after must be >= 0, got ", o.stop_after);
  DATANAS_CHECK(o.order == 1 || o.order == 2, "--order must be 1 or 2, got ", o.order);
  DATANAS_CHECK(o.lr > 0 && o.arch_lr > 0 && o.l1 >= 0, "--lr and --arch-lr must be > 0, --l1 >= 0");
  DATANAS_CHECK(!o.sparse || o.estimator == "gdas" || o.estimator == "egs",
                "--sparse needs a hard estimator (gdas or egs); ", o.estimator, " mixes every op");
  DATANAS_CHECK(!o.cuda_graph || o.device == "cuda", "--cuda-graph needs --device cuda");
  io::apply_depthwise(o.depthwise, o.device);
  DATANAS_CHECK(!o.cuda_graph || !o.sparse, "--cuda-graph needs a dense step: a sparse step reads the sampled "
                "architecture on the host; drop --sparse or --cuda-graph");
  DATANAS_CHECK(!o.resume || fs::exists(o.out + "/checkpoint"), "--resume: no checkpoint at '", o.out,
                "/checkpoint'");
  return with_space(o, [&]<class Space>() { return run<Space>(o); });
} catch (const std::exception& e) {
  std::fprintf(stderr, "datanas-search: error: %s\n", e.what());
  return 2;
}
