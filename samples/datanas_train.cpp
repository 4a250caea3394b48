// datanas-train: trains a genotype's evaluation network from scratch (ALGORITHMS.md §1.4) on
// CIFAR-10 or Fashion-MNIST and measures it on the test split.
//
//   datanas-train --genotype out/search/genotype.json --dataset fashion-mnist ...
//   datanas-train --eval-only --model out/train/model.ckpt
//
// Writes OUT/{log.csv, checkpoint (every epoch, atomic), model.ckpt, summary.json}.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <sstream>

#include "datanas/data/cifar10.hpp"
#include "datanas/data/idx.hpp"
#include "datanas/io/args.hpp"
#include "datanas/io/device.hpp"
#include "datanas/io/files.hpp"
#include "datanas/io/json.hpp"
#include "datanas/io/run.hpp"
#include "datanas/train/trainer.hpp"

using namespace datanas;
namespace fs = std::filesystem;

namespace {

struct Options {
  std::string genotype = "DARTS_V2", dataset = "cifar10", data_dir, out = "out/train", model;
  std::string device = "cpu";
  std::string depthwise = "cudnn";
  long init_channels = 36, layers = 20, epochs = 10, batch_size = 96, train_limit = 0, test_limit = 0;
  long cutout = 16, crop_pad = 4, stop_after = 0;
  double lr = 0.025, drop_path = 0.2, auxiliary_weight = 0.4;
  bool auxiliary = true, resume = false, dry_run = false, eval_only = false, cuda_graph = false;
  std::uint64_t seed = 1;

  /// The flags that fix the network, the data and the schedules: a checkpoint only resumes
  /// under the same.
  [[nodiscard]] std::string identity(const search::Genotype& g) const {
    std::ostringstream s;
    s << "genotype=" << search::to_text(g) << " dataset=" << dataset << " init_channels=" << init_channels
      << " layers=" << layers << " auxiliary=" << auxiliary << " auxiliary_weight=" << auxiliary_weight
      << " drop_path=" << drop_path << " cutout=" << cutout << " crop_pad=" << crop_pad << " epochs=" << epochs
      << " batch_size=" << batch_size << " lr=" << lr << " train_limit=" << train_limit
      << " test_limit=" << test_limit << " seed=" << seed;
    return s.str();
  }
};

/// What a data set fixes about the network and the report.
struct DatasetInfo {
  index_t channels, image_size;
  std::vector<float> mean, std;
  std::vector<std::string> class_names;
};

DatasetInfo dataset_info(const std::string& name) {
  if (name == "fashion-mnist")
    return {1, 28, {data::FashionMnist::kMean}, {data::FashionMnist::kStd},
            {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"}};
  return {3, 32, {data::Cifar10::kMean.begin(), data::Cifar10::kMean.end()},
          {data::Cifar10::kStd.begin(), data::Cifar10::kStd.end()},
          {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}};
}

struct Splits {
  data::LabelledImages train, test;
};

/// Both splits; `train_limit` / `test_limit` > 0 keep only the first N images.
Splits load_data(const Options& o, bool need_train) {
  Splits s;
  if (o.dataset == "fashion-mnist") {
    auto fm = data::FashionMnist::load(o.data_dir.empty() ? data::FashionMnist::kDefaultDir : o.data_dir);
    s.train = need_train ? data::head(fm.train, o.train_limit) : data::LabelledImages{};
    s.test = data::head(fm.test, o.test_limit);
  } else {
    data::Cifar10::Options co;
    co.train_limit = need_train ? (o.train_limit > 0 ? o.train_limit : -1) : 0;
    co.test_limit = o.test_limit > 0 ? o.test_limit : -1;
    auto c = data::Cifar10::load(o.data_dir.empty() ? "../shared/data/cifar10" : o.data_dir, co);
    s.train = std::move(c.train);
    s.test = std::move(c.test);
  }
  return s;
}

spaces::EvalNetworkConfig network_config(const Options& o, const DatasetInfo& d) {
  return {.init_channels = o.init_channels, .layers = int(o.layers), .in_channels = d.channels,
          .image_size = d.image_size, .num_classes = int(d.class_names.size()), .auxiliary = o.auxiliary};
}

void print_report(const train::EvalResult& r, const DatasetInfo& d) {
  std::printf("test: %ld images, accuracy %.2f%% (error %.2f%%), loss %.4f\n", r.images, 100 * r.accuracy,
              100 * (1 - r.accuracy), r.loss);
  std::printf("confusion matrix (rows: true class, columns: predicted), per-class accuracy:\n");
  const auto acc = r.per_class_accuracy();
  for (int t = 0; t < r.classes; ++t) {
    std::printf("  %-12s", d.class_names[std::size_t(t)].c_str());
    for (int p = 0; p < r.classes; ++p) std::printf(" %5ld", r.count(t, p));
    std::printf("   %6.2f%%\n", 100 * acc[std::size_t(t)]);
  }
}

/// The measured results as JSON (summary.json, eval.json).
io::Json results_json(const train::EvalResult& r, const DatasetInfo& d) {
  io::Json j = io::Json::object();
  j["test_accuracy"] = r.accuracy;
  j["test_error"] = 1 - r.accuracy;
  j["test_loss"] = r.loss;
  j["test_images"] = r.images;
  io::Json per_class = io::Json::object(), confusion = io::Json::array(), names = io::Json::array();
  const auto acc = r.per_class_accuracy();
  for (int t = 0; t < r.classes; ++t) {
    per_class[d.class_names[std::size_t(t)]] = acc[std::size_t(t)];
    names.push_back(d.class_names[std::size_t(t)]);
    io::Json row = io::Json::array();
    for (int p = 0; p < r.classes; ++p) row.push_back(r.count(t, p));
    confusion.push_back(std::move(row));
  }
  j["class_names"] = std::move(names);
  j["per_class_accuracy"] = std::move(per_class);
  j["confusion"] = std::move(confusion);
  return j;
}

// The saved model: weights, BN statistics and everything needed to rebuild the network.
constexpr const char* kModelKind = "datanas-train model";

template <class D>
void save_model(const std::string& path, const spaces::EvalNetwork<float, spaces::DartsOps, D>& net,
                const Options& o) {
  io::Checkpoint ck(path);
  ck.put("kind", kModelKind);
  ck.put("genotype", search::to_text(net.genotype()));
  ck.put("dataset", o.dataset);
  const auto& c = net.config();
  ck.put("init_channels", std::int64_t(c.init_channels));
  ck.put("layers", std::int64_t(c.layers));
  ck.put("auxiliary", std::int64_t(c.auxiliary));
  io::put_module(ck, "model.", net);
  ck.save_atomic(path);
}

template <class D>
int eval_only(Options o, const io::ArgParser& args) {
  DATANAS_CHECK(!o.model.empty(), "--eval-only needs --model PATH (a model.ckpt written by datanas-train)");
  DATANAS_CHECK(fs::is_regular_file(o.model), "--model: no file at '", o.model, "'");
  const auto ck = io::Checkpoint::load(o.model);
  DATANAS_CHECK(ck.has("kind") && ck.get_string("kind") == kModelKind, "--model: '", o.model,
                "' is not a model written by datanas-train (a training checkpoint or a search checkpoint? "
                "use OUT/model.ckpt)");
  // The file describes its network; flags given on the command line must agree with it.
  const search::Genotype saved_g = search::parse_genotype(ck.get_string("genotype"));
  auto agree = [&](const char* flag, bool same, const std::string& saved, const std::string& given) {
    DATANAS_CHECK(!args.given(flag) || same, "--model: '", o.model, "' holds a network with ", flag, " ",
                  saved, ", but --", flag, " is ", given);
  };
  agree("genotype", !args.given("genotype") || search::load_genotype(o.genotype) == saved_g,
        search::to_text(saved_g), o.genotype);
  agree("dataset", o.dataset == ck.get_string("dataset"), ck.get_string("dataset"), o.dataset);
  agree("init-channels", o.init_channels == ck.get_int("init_channels"), std::to_string(ck.get_int("init_channels")),
        std::to_string(o.init_channels));
  agree("layers", o.layers == ck.get_int("layers"), std::to_string(ck.get_int("layers")), std::to_string(o.layers));
  o.dataset = ck.get_string("dataset");
  o.init_channels = long(ck.get_int("init_channels"));
  o.layers = long(ck.get_int("layers"));
  o.auxiliary = ck.get_int("auxiliary") != 0;
  const DatasetInfo d = dataset_info(o.dataset);
  PhiloxGenerator init_gen(o.seed);
  spaces::EvalNetwork<float, spaces::DartsOps, D> net(saved_g, network_config(o, d), init_gen);
  io::restore_module(ck, "model.", net);
  const Splits s = load_data(o, false);
  std::printf("evaluating %s (%s, C=%ld, %ld cells, %.6fM parameters) on %ld %s test images\n", o.model.c_str(),
              search::to_text(saved_g).c_str(), o.init_channels, o.layers,
              double(net.parameter_count_without_auxiliary()) / 1e6, long(s.test.size()), o.dataset.c_str());
  const auto r = train::evaluate(net, s.test, {d.mean, d.std}, o.batch_size, int(d.class_names.size()));
  print_report(r, d);
  io::Json j = results_json(r, d);
  j["model"] = o.model;
  j["genotype"] = search::to_text(saved_g);
  fs::create_directories(o.out);
  io::write_text_file(o.out + "/eval.json", j.dump(2) + "\n");
  std::printf("wrote %s/eval.json\n", o.out.c_str());
  return 0;
}

template <class D>
int train_from_scratch(const Options& o) {
  const search::Genotype g = search::load_genotype(o.genotype);
  const DatasetInfo d = dataset_info(o.dataset);
  PhiloxGenerator init_gen(o.seed);
  spaces::EvalNetwork<float, spaces::DartsOps, D> net(g, network_config(o, d), init_gen);
  const double params = double(net.parameter_count_without_auxiliary()) / 1e6;
  std::printf("genotype = %s\n", search::to_text(g).c_str());
  std::printf("param size = %.6fMB\n", params);
  if (o.dry_run) return 0;

  const Splits s = load_data(o, true);
  train::TrainConfig tc;
  tc.epochs = o.epochs;
  tc.batch_size = o.batch_size;
  tc.lr = o.lr;
  tc.drop_path = o.drop_path;
  tc.auxiliary_weight = o.auxiliary_weight;
  tc.cutout = int(o.cutout);
  tc.crop_pad = int(o.crop_pad);
  tc.seed = o.seed;
  tc.cuda_graph = o.cuda_graph;
  const data::ChannelNorm norm{d.mean, d.std};
  train::Trainer<float, D> trainer(net, s.train, norm, tc);

  const std::string ckpt_path = o.out + "/checkpoint", log_path = o.out + "/log.csv";
  const std::string identity = o.identity(g);
  if (auto ck = io::open_run(o.out, o.resume, identity,
                             "epoch,lr,drop_path,train_loss,train_acc,test_loss,test_acc,seconds,images_per_second")) {
    trainer.restore(*ck);
    std::printf("resumed from %s at epoch %ld of %ld\n", ckpt_path.c_str(), trainer.epoch(), o.epochs);
  }
  std::printf("train: %s, %ld training / %ld test images, C=%ld, %ld cells%s, batch %ld, %ld epochs, %d threads\n",
              o.dataset.c_str(), long(s.train.size()), long(s.test.size()), o.init_channels, o.layers,
              net.has_auxiliary() ? ", auxiliary head" : "", o.batch_size, o.epochs, cpu::num_threads());

  const int classes = int(d.class_names.size());
  std::optional<train::EvalResult> last;
  long ran = 0;
  while (trainer.epoch() < o.epochs) {
    io::ProgressBar bar("epoch " + std::to_string(trainer.epoch() + 1) + "/" + std::to_string(o.epochs),
                        trainer.steps_per_epoch());
    const auto st = trainer.run_epoch(&bar);
    last = train::evaluate(net, s.test, norm, o.batch_size, classes);
    std::printf("epoch %ld: lr %.5f drop path %.3f | train loss %.4f acc %.2f%% | test loss %.4f acc %.2f%% | "
                "%.0f img/s\n",
                st.epoch, st.lr, st.drop_path, st.loss, 100 * st.accuracy, last->loss, 100 * last->accuracy,
                st.images_per_second);
    std::ostringstream row;
    row << st.epoch << ',' << st.lr << ',' << st.drop_path << ',' << st.loss << ',' << st.accuracy << ','
        << last->loss << ',' << last->accuracy << ',' << st.seconds << ',' << st.images_per_second;
    io::append_line(log_path, row.str());
    io::Checkpoint ck(ckpt_path);
    trainer.save(ck);
    ck.put("flags", identity);
    ck.save_atomic(ckpt_path);
    ++ran;
    if (o.stop_after > 0 && ran >= o.stop_after && trainer.epoch() < o.epochs) {
      std::printf("stopped after %ld epoch(s) of this run; continue with --resume\n", ran);
      return 0;
    }
  }
  if (!last) last = train::evaluate(net, s.test, norm, o.batch_size, classes);  // resumed a finished run
  save_model(o.out + "/model.ckpt", net, o);
  print_report(*last, d);
  io::Json summary = results_json(*last, d);
  summary["genotype"] = search::to_text(g);
  summary["params_millions"] = params;
  summary["params_with_auxiliary"] = net.parameter_count();
  summary["dataset"] = o.dataset;
  summary["epochs"] = o.epochs;
  summary["train_images"] = s.train.size();
  summary["flags"] = identity;
  io::write_text_file(o.out + "/summary.json", summary.dump(2) + "\n");
  std::printf("wrote %s/{log.csv,checkpoint,model.ckpt,summary.json}\n", o.out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  Options o;
  io::ArgParser args("datanas-train",
                     "Trains a genotype's evaluation network from scratch (DARTS recipe) and reports test accuracy.\n"
                     "Writes OUT/{log.csv,checkpoint,model.ckpt,summary.json}; --eval-only writes OUT/eval.json.");
  args.add("genotype", &o.genotype,
           "a published name (DARTS_V1, DARTS_V2, DATA_M4, DATA_M7), a Genotype(...) text, or a genotype.json / "
           "genotype.txt path")
      .add_choice("dataset", &o.dataset, {"fashion-mnist", "cifar10"}, "data set")
      .add("data-dir", &o.data_dir, "data directory (default: ../shared/data/cifar10, or the Debian Fashion-MNIST package)")
      .add("init-channels", &o.init_channels, "C of the first cells")
      .add("layers", &o.layers, "cells")
      .add("auxiliary", &o.auxiliary, "auxiliary head after cell 2L/3")
      .add("auxiliary-weight", &o.auxiliary_weight, "weight of the auxiliary loss")
      .add("drop-path", &o.drop_path, "final drop-path probability (ramped linearly from 0)")
      .add("cutout", &o.cutout, "cutout square side in pixels (0 = off)")
      .add("crop-pad", &o.crop_pad, "random-crop padding; 0 turns crop and flip off")
      .add("epochs", &o.epochs, "total epochs (defines the schedules; the reference recipe is 600)")
      .add("batch-size", &o.batch_size, "batch size")
      .add("lr", &o.lr, "SGD learning rate (cosine to 0)")
      .add("train-limit", &o.train_limit, "use only the first N training images (0 = all)")
      .add("test-limit", &o.test_limit, "evaluate only the first N test images (0 = all)")
      .add("seed", &o.seed, "random seed")
      .add_choice("device", &o.device, {"cpu", "cuda"}, "where training runs (a checkpoint resumes on either)")
      .add("cuda-graph", &o.cuda_graph, "replay each epoch's training step as a CUDA graph (--device cuda)")
      .add_choice("depthwise", &o.depthwise, {"cudnn", "own"},
                  "depthwise convolutions on cuDNN or on datanas' kernels (--device cuda)")
      .add("out", &o.out, "output directory")
      .add("resume", &o.resume, "continue from OUT/checkpoint")
      .add("stop-after", &o.stop_after, "stop cleanly after N epochs of this run (0 = never)")
      .add("dry-run", &o.dry_run, "build the network, print its parameter size (without the auxiliary head), exit")
      .add("eval-only", &o.eval_only, "evaluate the saved model given by --model on the test split")
      .add("model", &o.model, "model.ckpt for --eval-only");
  if (!args.parse(argc, argv, std::cout)) return 0;
  DATANAS_CHECK(o.epochs >= 1, "--epochs must be >= 1, got ", o.epochs);
  DATANAS_CHECK(o.batch_size >= 1, "--batch-size must be >= 1, got ", o.batch_size);
  DATANAS_CHECK(o.init_channels >= 2 && o.init_channels % 2 == 0, "--init-channels must be even and >= 2, got ",
                o.init_channels);
  DATANAS_CHECK(o.layers >= 1, "--layers must be >= 1, got ", o.layers);
  DATANAS_CHECK(o.train_limit >= 0 && o.test_limit >= 0, "--train-limit and --test-limit must be >= 0");
  DATANAS_CHECK(o.stop_after >= 0, "--stop-after must be >= 0, got ", o.stop_after);
  DATANAS_CHECK(o.lr > 0, "--lr must be > 0, got ", o.lr);
  DATANAS_CHECK(!o.cuda_graph || o.device == "cuda", "--cuda-graph needs --device cuda");
  io::apply_depthwise(o.depthwise, o.device);
  DATANAS_CHECK(o.drop_path >= 0 && o.drop_path < 1, "--drop-path must be in [0, 1), got ", o.drop_path);
  DATANAS_CHECK(o.auxiliary_weight >= 0, "--auxiliary-weight must be >= 0, got ", o.auxiliary_weight);
  DATANAS_CHECK(o.cutout >= 0 && o.crop_pad >= 0, "--cutout and --crop-pad must be >= 0");
  DATANAS_CHECK(!o.eval_only || !o.resume, "--eval-only and --resume exclude each other");
  DATANAS_CHECK(o.model.empty() || o.eval_only, "--model is read only with --eval-only");
  DATANAS_CHECK(!o.resume || fs::exists(o.out + "/checkpoint"), "--resume: no checkpoint at '", o.out,
                "/checkpoint'");
  return io::with_device(o.device, [&]<class D>() {
    return o.eval_only ? eval_only<D>(o, args) : train_from_scratch<D>(o);
  });
} catch (const std::exception& e) {
  std::fprintf(stderr, "datanas-train: error: %s\n", e.what());
  return 2;
}
