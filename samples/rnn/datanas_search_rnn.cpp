// datanas-search-rnn: differentiable architecture search of a recurrent cell (the DARTS RNN
// space: 8 nodes, none / tanh / relu / sigmoid / identity) on Penn Treebank, with DATA's EGS
// (per node, the default) or the DARTS / SNAS / GDAS estimators.
//
// The runtime flags (estimator, M, granularity) map onto compile-time search spaces at one place,
// with_space() below; --device {cpu,cuda} picks the device (io::with_device).
#include <cmath>
#include <cstdio>
#include <iostream>
#include <optional>
#include <sstream>

#include "datanas/io/args.hpp"
#include "datanas/io/device.hpp"
#include "datanas/io/files.hpp"
#include "datanas/io/json.hpp"
#include "datanas/io/progress.hpp"
#include "datanas/search/rnn_searcher.hpp"
#include "rnn_common.hpp"

using namespace datanas;
namespace fs = std::filesystem;

namespace {

struct Options {
  std::string data_dir = "../shared/data/ptb", out = "out/search-rnn";
  std::string estimator = "egs", granularity = "node", normalize = "softmax", derive = "auto", device = "cpu";
  long M = 4, epochs = 50, batch_size = 256, eval_batch_size = 10, bptt = 35, emsize = 300, nhid = 300;
  long train_limit = 0, eval_limit = 0, stop_after = 0;
  double lr = 20, arch_lr = 3e-3, wdecay = 5e-7, arch_wdecay = 1e-3, clip = 0.25, beta = 1e-3;
  double dropout = 0.75, dropouth = 0.25, dropoutx = 0.75, dropouti = 0.2, dropoute = 0.0;
  bool sparse = false, seq_jitter = false, resume = false, dry_run = false, cuda_graph = false;
  std::uint64_t seed = 2;

  /// The flags that fix the network, the data and the schedules: a checkpoint only resumes
  /// under the same.
  [[nodiscard]] std::string identity() const {
    std::ostringstream s;
    s << "estimator=" << estimator << " M=" << M << " granularity=" << granularity << " normalize=" << normalize
      << " sparse=" << sparse << " epochs=" << epochs << " batch_size=" << batch_size
      << " eval_batch_size=" << eval_batch_size << " bptt=" << bptt << " seq_jitter=" << seq_jitter
      << " emsize=" << emsize << " nhid=" << nhid << " train_limit=" << train_limit << " eval_limit=" << eval_limit
      << " lr=" << lr << " arch_lr=" << arch_lr << " wdecay=" << wdecay << " arch_wdecay=" << arch_wdecay
      << " clip=" << clip << " beta=" << beta << " dropout=" << dropout << "," << dropouth << "," << dropoutx << ","
      << dropouti << "," << dropoute << " seed=" << seed;
    return s.str();
  }
};

/// {"ops": [...], "recurrent": [[K logits] per (node, predecessor) row]}: raw logits.
std::string alpha_json(const search::AlphaMatrix& a, std::span<const std::string_view> ops) {
  io::Json root = io::Json::object();
  io::Json names = io::Json::array();
  for (auto o : ops) names.push_back(std::string(o));
  root.set("ops", std::move(names));
  io::Json rows = io::Json::array();
  for (int e = 0; e < a.rows; ++e) {
    io::Json row = io::Json::array();
    for (int k = 0; k < a.cols; ++k) row.push_back(a(e, k));
    rows.push_back(std::move(row));
  }
  root.set("recurrent", std::move(rows));
  return io::dump_json(root, 2) + "\n";
}

/// The estimator's probabilities per row (4 decimals), for the log.
template <class D>
std::string probabilities_text(const spaces::rnn::RnnSearchNetwork<float, D>& net, search::Normalize normalize) {
  NoGradGuard ng;
  PhiloxGenerator unused(0);
  const auto p = to_cpu(estimators::group_probabilities(net.alpha(), net.layout(), normalize, unused).value());
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(4);
  s << '[';
  for (int e = 0; e < net.layout().edges(); ++e) {
    s << (e ? ", [" : "[");
    for (int k = 0; k < net.layout().ops; ++k) s << (k ? ", " : "") << p[e * net.layout().ops + k];
    s << ']';
  }
  return s.str() + "]";
}

/// Everything after the network is built: compiled once per device, whatever the search space.
template <class D>
int search_with(spaces::rnn::RnnSearchNetwork<float, D>& net, const Options& o, const rnn_sample::Corpus& c,
                search::Normalize normalize) {
  using T = float;
  const Tensor<std::int32_t> train = data::batchify(c.train, o.batch_size);
  const Tensor<std::int32_t> search_stream = data::batchify(c.valid, o.batch_size);
  const Tensor<std::int32_t> valid = data::batchify(c.valid, o.eval_batch_size);
  const Tensor<std::int32_t> test = data::batchify(c.test, o.eval_batch_size);

  search::RnnSearchConfig sc;
  sc.epochs = o.epochs;
  sc.batch_size = o.batch_size;
  sc.eval_batch_size = o.eval_batch_size;
  sc.bptt = o.bptt;
  sc.seq_jitter = o.seq_jitter;
  sc.lr = o.lr;
  sc.weight_decay = o.wdecay;
  sc.clip = o.clip;
  sc.beta = o.beta;
  sc.arch_lr = o.arch_lr;
  sc.arch_weight_decay = o.arch_wdecay;
  sc.sparse = o.sparse;
  sc.cuda_graph = o.cuda_graph;
  sc.tau = estimators::default_schedule(net.estimator_kind());
  sc.normalize = normalize;
  sc.seed = o.seed;
  search::RnnSearcher<T, D> searcher(net, train, search_stream, valid, sc);

  const std::string ckpt_path = o.out + "/checkpoint", log_path = o.out + "/log.csv";
  if (auto ck = rnn_sample::open_run(o.out, o.resume, o.identity(),
                                     "epoch,train_loss,train_ppl,arch_loss,valid_loss,valid_ppl,lr,tau,seconds,"
                                     "tokens_per_second,genotype,probabilities")) {
    searcher.restore(*ck);
    std::printf("resumed from %s at epoch %ld of %ld\n", ckpt_path.c_str(), searcher.epoch(), o.epochs);
  }
  std::printf("search-rnn: %zu training / %zu validation tokens, vocabulary %d, estimator %s%s, granularity %s%s, "
              "%d threads; supernet %.6fM weights\n",
              c.train.size(), c.valid.size(), c.text.vocab.size(), o.estimator.c_str(),
              o.estimator == "egs" ? (" M=" + std::to_string(o.M)).c_str() : "", o.granularity.c_str(),
              o.sparse ? ", sparse" : "", cpu::num_threads(), double(net.parameter_count()) / 1e6);

  const bool data_rule = o.derive == "data" || (o.derive == "auto" && o.estimator == "egs");
  const auto gran = o.granularity == "edge" ? search::Granularity::kEdge : search::Granularity::kNode;
  auto derive_now = [&] {
    const auto a = searcher.alpha_matrix();
    return data_rule ? search::derive_rnn_data(a, int(o.M), normalize, gran, net.op_names())
                     : search::derive_rnn_darts(a, net.op_names());
  };

  long ran = 0;
  while (searcher.epoch() < o.epochs) {
    io::ProgressBar bar("epoch " + std::to_string(searcher.epoch() + 1) + "/" + std::to_string(o.epochs),
                        searcher.estimated_steps());
    bar.set_unit("tok");
    const auto st = searcher.run_epoch(&bar);
    const auto g = derive_now();
    std::printf("epoch %ld: train loss %.4f (ppl %.2f) | arch loss %.4f | valid loss %.4f ppl %.2f | tau %.3f | "
                "%.0f tok/s\n  genotype = %s\n",
                st.epoch, st.train_loss, std::exp(st.train_loss), st.arch_loss, st.valid_loss, std::exp(st.valid_loss),
                st.tau, st.tokens_per_second, search::to_text(g).c_str());
    std::ostringstream row;
    row << st.epoch << ',' << st.train_loss << ',' << std::exp(st.train_loss) << ',' << st.arch_loss << ','
        << st.valid_loss << ',' << std::exp(st.valid_loss) << ',' << st.lr << ',' << st.tau << ',' << st.seconds << ','
        << st.tokens_per_second << ',' << rnn_sample::csv_quote(search::to_text(g)) << ','
        << rnn_sample::csv_quote(probabilities_text(net, normalize));
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

  const auto g = derive_now();
  io::write_text_file(o.out + "/genotype.txt", search::to_text(g) + "\n");
  io::write_text_file(o.out + "/genotype.json", search::to_json(g) + "\n");
  io::write_text_file(o.out + "/alpha.json", alpha_json(searcher.alpha_matrix(), net.op_names()));
  if (searcher.epoch() < o.epochs) return 0;

  // The supernet under its architecture distribution (a fresh sample per window).
  const double valid_loss = searcher.valid_loss();
  net.eval();
  estimators::EstimatorConfig ec{sc.tau.at(o.epochs - 1, o.epochs), normalize};
  PhiloxGenerator noise(o.seed ^ 0x7E57ull), unused(0);
  const auto test_loss = train::evaluate_stream<T, D>(test, o.bptt, o.nhid, [&](const auto& in, const auto& h) {
    return net.forward_sampled(in, h, ec, noise, unused, o.sparse);
  });
  std::printf("supernet: valid ppl %.2f, test ppl %.2f\ngenotype = %s\n", std::exp(valid_loss),
              std::exp(test_loss.mean()), search::to_text(g).c_str());
  io::Json summary = io::Json::object();
  summary["valid_loss"] = valid_loss;
  summary["valid_ppl"] = std::exp(valid_loss);
  summary["test_loss"] = test_loss.mean();
  summary["test_ppl"] = std::exp(test_loss.mean());
  summary["genotype"] = search::to_text(g);
  summary["estimator"] = o.estimator;
  summary["epochs"] = double(o.epochs);
  summary["params"] = double(net.parameter_count());
  summary["flags"] = o.identity();
  io::write_text_file(o.out + "/summary.json", summary.dump() + "\n");
  std::printf("wrote %s/{genotype.txt,genotype.json,alpha.json,log.csv,checkpoint,summary.json}\n", o.out.c_str());
  return 0;
}

template <class Space>
int run(const Options& o) {
  const auto normalize = o.normalize == "relu" ? search::Normalize::kRelu : search::Normalize::kSoftmax;
  spaces::rnn::RnnConfig rc;
  rc.emsize = o.emsize;
  rc.nhid = o.nhid;
  rc.dropout = o.dropout;
  rc.dropouth = o.dropouth;
  rc.dropoutx = o.dropoutx;
  rc.dropouti = o.dropouti;
  rc.dropoute = o.dropoute;
  std::optional<rnn_sample::Corpus> corpus;
  if (!o.dry_run || fs::is_directory(o.data_dir)) corpus = rnn_sample::load_corpus(o.data_dir, o.train_limit, o.eval_limit);
  rc.vocab = corpus ? corpus->text.vocab.size() : 10000;
  PhiloxGenerator init_gen(o.seed);
  auto go = [&]<class D>() {
    spaces::rnn::RnnSupernet<float, Space, D> net(rc, init_gen, normalize);
    if (o.dry_run) {
      if (!corpus) std::printf("(no corpus at '%s': assuming the PTB vocabulary of 10000 words)\n", o.data_dir.c_str());
      std::printf("param size = %.6fMB\n", double(net.parameter_count()) / 1e6);
      return 0;
    }
    return search_with<D>(net, o, *corpus, normalize);
  };
  return io::with_device(o.device, go);
}

/// The one runtime-to-compile-time switch: estimator x M x granularity (8 nodes, DARTS ops).
template <class F>
int with_space(const Options& o, F&& f) {
  using spaces::rnn::DartsRnnOps;
  using spaces::rnn::RecurrentSearchSpace;
  return estimators::with_estimator(o.estimator, o.M, o.granularity, [&]<class E, search::Granularity G>() {
    return f.template operator()<RecurrentSearchSpace<DartsRnnOps, 8, E, G>>();
  });
}

}  // namespace

int main(int argc, char** argv) try {
  Options o;
  io::ArgParser args("datanas-search-rnn",
                     "Architecture search of a recurrent cell (DARTS RNN space) on Penn Treebank with DATA's EGS "
                     "(default) or the DARTS/SNAS/GDAS estimators.\n"
                     "Writes OUT/{genotype.txt,genotype.json,alpha.json,log.csv,checkpoint,summary.json}.");
  args.add("data-dir", &o.data_dir, "corpus directory (ptb.{train,valid,test}.txt or {train,valid,test}.txt)")
      .add_choice("estimator", &o.estimator, {"softmax", "snas", "gdas", "egs"}, "architecture estimator")
      .add("M", &o.M, "EGS ensemble size (1 to 8)")
      .add_choice("granularity", &o.granularity, {"edge", "node"}, "sampling groups")
      .add_choice("normalize", &o.normalize, {"softmax", "relu"}, "alpha -> probabilities")
      .add("sparse", &o.sparse, "run only the sampled terms (gdas, egs)")
      .add_choice("derive", &o.derive, {"auto", "darts", "data"}, "derivation rule (auto: data for egs, else darts)")
      .add("epochs", &o.epochs, "epochs")
      .add("batch-size", &o.batch_size, "training and architecture batch size")
      .add("eval-batch-size", &o.eval_batch_size, "validation batch size")
      .add("bptt", &o.bptt, "BPTT window length")
      .add("seq-jitter", &o.seq_jitter, "window lengths ~ N(bptt, 5) as in training (DARTS' search has them off)")
      .add("emsize", &o.emsize, "embedding size (= nhid: tied decoder)")
      .add("nhid", &o.nhid, "hidden units")
      .add("lr", &o.lr, "weight learning rate (SGD)")
      .add("arch-lr", &o.arch_lr, "architecture learning rate (Adam)")
      .add("wdecay", &o.wdecay, "weight decay")
      .add("arch-wdecay", &o.arch_wdecay, "architecture weight decay")
      .add("clip", &o.clip, "gradient norm clip")
      .add("beta", &o.beta, "temporal activation regularisation (0 = off)")
      .add("dropout", &o.dropout, "output dropout")
      .add("dropouth", &o.dropouth, "hidden-state dropout")
      .add("dropoutx", &o.dropoutx, "input dropout")
      .add("dropouti", &o.dropouti, "embedding output dropout")
      .add("dropoute", &o.dropoute, "embedding (word) dropout")
      .add("train-limit", &o.train_limit, "use only the first N training tokens (0 = all)")
      .add("eval-limit", &o.eval_limit, "use only the first N validation and test tokens (0 = all)")
      .add("seed", &o.seed, "random seed")
      .add("out", &o.out, "output directory")
      .add("resume", &o.resume, "continue from OUT/checkpoint")
      .add("stop-after", &o.stop_after, "stop cleanly after N epochs of this run (0 = never)")
      .add_choice("device", &o.device, {"cpu", "cuda"}, "where the search runs (a checkpoint resumes on either)")
      .add("cuda-graph", &o.cuda_graph, "replay each search step as a CUDA graph (--device cuda, dense steps)")
      .add("dry-run", &o.dry_run, "build the supernet, print its parameter size, exit");
  if (!args.parse(argc, argv, std::cout)) return 0;
  DATANAS_CHECK(o.epochs >= 1, "--epochs must be >= 1, got ", o.epochs);
  DATANAS_CHECK(o.batch_size >= 2, "--batch-size must be >= 2 (batch norm in the search cell), got ", o.batch_size);
  DATANAS_CHECK(o.eval_batch_size >= 2, "--eval-batch-size must be >= 2 (batch norm in the search cell), got ",
                o.eval_batch_size);
  DATANAS_CHECK(o.bptt >= 2, "--bptt must be >= 2, got ", o.bptt);
  DATANAS_CHECK(o.emsize >= 1 && o.emsize == o.nhid, "--emsize must equal --nhid (tied decoder), got ", o.emsize,
                " and ", o.nhid);
  DATANAS_CHECK(o.train_limit >= 0 && o.eval_limit >= 0, "--train-limit and --eval-limit must be >= 0");
  DATANAS_CHECK(o.stop_after >= 0, "--stop-after must be >= 0, got ", o.stop_after);
  DATANAS_CHECK(o.lr > 0 && o.arch_lr > 0 && o.clip > 0, "--lr, --arch-lr and --clip must be > 0");
  DATANAS_CHECK(o.wdecay >= 0 && o.arch_wdecay >= 0 && o.beta >= 0, "--wdecay, --arch-wdecay and --beta must be >= 0");
  DATANAS_CHECK(!o.sparse || o.estimator == "gdas" || o.estimator == "egs",
                "--sparse needs a hard estimator (gdas or egs); ", o.estimator, " mixes every op");
  DATANAS_CHECK(!o.cuda_graph || o.device == "cuda", "--cuda-graph needs --device cuda");
  DATANAS_CHECK(!o.cuda_graph || !o.sparse, "--cuda-graph needs a dense step: a sparse step reads the sampled "
                "architecture on the host; drop --sparse or --cuda-graph");
  DATANAS_CHECK(!o.resume || fs::exists(o.out + "/checkpoint"), "--resume: no checkpoint at '", o.out, "/checkpoint'");
  return with_space(o, [&]<class Space>() { return run<Space>(o); });
} catch (const std::exception& e) {
  std::fprintf(stderr, "datanas-search-rnn: error: %s\n", e.what());
  return 2;
}
