// datanas-train-rnn: trains a recurrent cell from scratch on Penn Treebank as DARTS' rnn/train.py
// does (850 units, SGD lr 20 then averaged SGD on the non-monotone trigger) and reports the valid
// and test perplexity of the best validation weights. --device {cpu,cuda} picks the device;
// --cuda-graph replays the training steps as CUDA graphs (the same results).
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
#include "datanas/search/rnn_genotype.hpp"
#include "datanas/train/rnn_trainer.hpp"
#include "rnn_common.hpp"

using namespace datanas;
namespace fs = std::filesystem;

namespace {

struct Options {
  std::string data_dir = "../shared/data/ptb", out = "out/train-rnn", genotype = "DARTS_V2", device = "cpu";
  long epochs = 8000, batch_size = 64, eval_batch_size = 10, test_batch_size = 1, bptt = 35, emsize = 850, nhid = 850;
  long nonmono = 5, train_limit = 0, eval_limit = 0, stop_after = 0;
  double lr = 20, wdecay = 8e-7, clip = 0.25, beta = 1e-3;
  double dropout = 0.75, dropouth = 0.25, dropoutx = 0.75, dropouti = 0.2, dropoute = 0.1;
  bool resume = false, dry_run = false, cuda_graph = false;
  std::uint64_t seed = 1267;

  [[nodiscard]] std::string identity(const search::RecurrentGenotype& g) const {
    std::ostringstream s;
    s << "genotype=" << search::to_text(g) << " epochs=" << epochs << " batch_size=" << batch_size
      << " eval_batch_size=" << eval_batch_size << " bptt=" << bptt << " emsize=" << emsize << " nhid=" << nhid
      << " nonmono=" << nonmono << " train_limit=" << train_limit << " eval_limit=" << eval_limit << " lr=" << lr
      << " wdecay=" << wdecay << " clip=" << clip << " beta=" << beta << " dropout=" << dropout << "," << dropouth
      << "," << dropoutx << "," << dropouti << "," << dropoute << " seed=" << seed;
    return s.str();
  }
};

/// The run on device D (compiled once per device).
template <class D>
int run_on(const Options& o) {
  using T = float;
  const search::RecurrentGenotype genotype = search::load_recurrent_genotype(o.genotype);
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
  spaces::rnn::RnnEvalModel<T, spaces::rnn::DartsRnnOps, D> model(rc, genotype, init_gen);
  if (o.dry_run) {
    if (!corpus) std::printf("(no corpus at '%s': assuming the PTB vocabulary of 10000 words)\n", o.data_dir.c_str());
    std::printf("genotype = %s\nparam size = %.6fMB\n", search::to_text(genotype).c_str(),
                double(model.parameter_count()) / 1e6);
    return 0;
  }
  const rnn_sample::Corpus& c = *corpus;
  const Tensor<std::int32_t> train = data::batchify(c.train, o.batch_size);
  const Tensor<std::int32_t> valid = data::batchify(c.valid, o.eval_batch_size);
  const Tensor<std::int32_t> test = data::batchify(c.test, o.test_batch_size);

  train::RnnTrainConfig tc;
  tc.epochs = o.epochs;
  tc.batch_size = o.batch_size;
  tc.eval_batch_size = o.eval_batch_size;
  tc.bptt = o.bptt;
  tc.lr = o.lr;
  tc.weight_decay = o.wdecay;
  tc.clip = o.clip;
  tc.beta = o.beta;
  tc.nonmono = o.nonmono;
  tc.seed = o.seed;
  tc.cuda_graph = o.cuda_graph;
  train::RnnTrainer<T, D> trainer(model, train, valid, tc);

  const std::string ckpt_path = o.out + "/checkpoint", log_path = o.out + "/log.csv";
  const std::string identity = o.identity(genotype);
  if (auto ck = rnn_sample::open_run(o.out, o.resume, identity,
                                     "epoch,train_loss,train_ppl,valid_loss,valid_ppl,optimizer,best,seconds,"
                                     "tokens_per_second")) {
    trainer.restore(*ck);
    std::printf("resumed from %s at epoch %ld of %ld\n", ckpt_path.c_str(), trainer.epoch(), o.epochs);
  }
  io::write_text_file(o.out + "/genotype.txt", search::to_text(genotype) + "\n");
  io::write_text_file(o.out + "/genotype.json", search::to_json(genotype) + "\n");
  std::printf("train-rnn: %zu training tokens, vocabulary %d, %ld units, %d threads; %.6fM weights\n  genotype = %s\n",
              c.train.size(), c.text.vocab.size(), o.nhid, cpu::num_threads(), double(model.parameter_count()) / 1e6,
              search::to_text(genotype).c_str());

  long ran = 0;
  while (trainer.epoch() < o.epochs) {
    io::ProgressBar bar("epoch " + std::to_string(trainer.epoch() + 1) + "/" + std::to_string(o.epochs),
                        trainer.estimated_steps());
    bar.set_unit("tok");
    const auto st = trainer.run_epoch(&bar);
    std::printf("epoch %ld: train loss %.4f (ppl %.2f) | valid loss %.4f ppl %.2f%s%s | %.0f tok/s%s\n", st.epoch,
                st.train_loss, std::exp(st.train_loss), st.valid_loss, std::exp(st.valid_loss),
                st.averaged ? " (averaged weights)" : "", st.best ? " *best*" : "", st.tokens_per_second,
                st.switched ? "\n  non-monotone trigger: switching to averaged SGD" : "");
    std::ostringstream row;
    row << st.epoch << ',' << st.train_loss << ',' << std::exp(st.train_loss) << ',' << st.valid_loss << ','
        << std::exp(st.valid_loss) << ',' << (st.averaged ? "asgd" : "sgd") << ',' << (st.best ? 1 : 0) << ','
        << st.seconds << ',' << st.tokens_per_second;
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

  // The best validation weights, as DARTS' train.py reloads model.pt before testing.
  trainer.load_best();
  const double valid_loss = trainer.valid_loss();
  model.eval();
  PhiloxGenerator unused(0);
  const auto test_loss = train::evaluate_stream<T, D>(test, o.bptt, o.nhid, [&](const auto& in, const auto& h) {
    return model.forward(in, h, unused);
  });
  std::printf("best epoch %ld: valid ppl %.2f, test ppl %.2f (test batch %ld)\n", trainer.best_epoch(),
              std::exp(valid_loss), std::exp(test_loss.mean()), o.test_batch_size);
  io::Json summary = io::Json::object();
  summary["valid_loss"] = valid_loss;
  summary["valid_ppl"] = std::exp(valid_loss);
  summary["test_loss"] = test_loss.mean();
  summary["test_ppl"] = std::exp(test_loss.mean());
  summary["best_epoch"] = double(trainer.best_epoch());
  summary["epochs"] = double(o.epochs);
  summary["averaged_sgd"] = trainer.averaging();
  summary["params"] = double(model.parameter_count());
  summary["genotype"] = search::to_text(genotype);
  summary["flags"] = identity;
  io::write_text_file(o.out + "/summary.json", summary.dump() + "\n");
  std::printf("wrote %s/{genotype.txt,genotype.json,log.csv,checkpoint,summary.json}\n", o.out.c_str());
  return 0;
}

int run(const Options& o) {
  return io::with_device(o.device, [&]<class D>() { return run_on<D>(o); });
}

}  // namespace

int main(int argc, char** argv) try {
  Options o;
  io::ArgParser args("datanas-train-rnn",
                     "Trains a recurrent cell from scratch on Penn Treebank (DARTS' train.py recipe) and reports "
                     "valid and test perplexity.\nWrites OUT/{genotype.txt,genotype.json,log.csv,checkpoint,summary.json}.");
  args.add("genotype", &o.genotype, "DARTS_V1, DARTS_V2, ENAS, a Genotype(recurrent=...) text, or a genotype file")
      .add("data-dir", &o.data_dir, "corpus directory (ptb.{train,valid,test}.txt or {train,valid,test}.txt)")
      .add("epochs", &o.epochs, "epochs")
      .add("batch-size", &o.batch_size, "training batch size")
      .add("eval-batch-size", &o.eval_batch_size, "validation batch size")
      .add("test-batch-size", &o.test_batch_size, "test batch size")
      .add("bptt", &o.bptt, "BPTT window length")
      .add("emsize", &o.emsize, "embedding size (= nhid: tied decoder)")
      .add("nhid", &o.nhid, "hidden units")
      .add("lr", &o.lr, "learning rate (SGD, then averaged SGD)")
      .add("wdecay", &o.wdecay, "weight decay")
      .add("clip", &o.clip, "gradient norm clip")
      .add("beta", &o.beta, "temporal activation regularisation (0 = off)")
      .add("nonmono", &o.nonmono, "non-monotone interval of the switch to averaged SGD")
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
      .add_choice("device", &o.device, {"cpu", "cuda"}, "where the training runs (a checkpoint resumes on either)")
      .add("cuda-graph", &o.cuda_graph, "replay each training step as a CUDA graph (--device cuda)")
      .add("dry-run", &o.dry_run, "build the model, print its parameter size, exit");
  if (!args.parse(argc, argv, std::cout)) return 0;
  DATANAS_CHECK(o.epochs >= 1, "--epochs must be >= 1, got ", o.epochs);
  DATANAS_CHECK(o.batch_size >= 1 && o.eval_batch_size >= 1 && o.test_batch_size >= 1,
                "--batch-size, --eval-batch-size and --test-batch-size must be >= 1");
  DATANAS_CHECK(o.bptt >= 2, "--bptt must be >= 2, got ", o.bptt);
  DATANAS_CHECK(o.emsize >= 1 && o.emsize == o.nhid, "--emsize must equal --nhid (tied decoder), got ", o.emsize,
                " and ", o.nhid);
  DATANAS_CHECK(o.nonmono >= 0, "--nonmono must be >= 0, got ", o.nonmono);
  DATANAS_CHECK(o.train_limit >= 0 && o.eval_limit >= 0, "--train-limit and --eval-limit must be >= 0");
  DATANAS_CHECK(o.stop_after >= 0, "--stop-after must be >= 0, got ", o.stop_after);
  DATANAS_CHECK(o.lr > 0 && o.clip > 0, "--lr and --clip must be > 0");
  DATANAS_CHECK(o.wdecay >= 0 && o.beta >= 0, "--wdecay and --beta must be >= 0");
  DATANAS_CHECK(!o.cuda_graph || o.device == "cuda", "--cuda-graph needs --device cuda");
  DATANAS_CHECK(!o.resume || fs::exists(o.out + "/checkpoint"), "--resume: no checkpoint at '", o.out, "/checkpoint'");
  return run(o);
} catch (const std::exception& e) {
  std::fprintf(stderr, "datanas-train-rnn: error: %s\n", e.what());
  return 2;
}
