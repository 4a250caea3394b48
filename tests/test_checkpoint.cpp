// Checkpoints: bit-exact round trips of every entry kind, a resumed training run that matches
// an uninterrupted one bit for bit, and every kind of broken or mismatched file.
#include <doctest/doctest.h>
#include <unistd.h>
#include <zlib.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "datanas/datanas.hpp"
#include "datanas/io/checkpoint.hpp"
#include "datanas/nn/layers.hpp"
#include "datanas/optim/optimizers.hpp"

using namespace datanas;
namespace fs = std::filesystem;

namespace {
/// doctest's Contains takes only its own String type.
doctest::Contains contains(const std::string& s) { return doctest::Contains(s.c_str()); }

std::string tmp_dir() {
  const fs::path dir =
      fs::temp_directory_path() / ("datanas_test_ckpt_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir.string();
}
std::string tmp_path(const std::string& name) { return tmp_dir() + "/" + name; }

std::vector<unsigned char> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
void write_bytes(const std::string& path, const std::vector<unsigned char>& b) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}
template <class T>
bool same_bits(const Tensor<T>& a, const Tensor<T>& b) {
  return a.shape() == b.shape() &&
         std::memcmp(a.data(), b.data(), sizeof(T) * std::size_t(a.numel())) == 0;
}

/// conv -> batch norm -> relu -> global average pool -> linear: parameters and buffers.
template <class T>
struct Net : nn::Module<T> {
  nn::Conv2d<T> conv;
  nn::BatchNorm2d<T> bn;
  nn::Linear<T> fc;
  Net(index_t channels, PhiloxGenerator& g)
      : conv(3, channels, 3, {.padding = 1}, true, g), bn(channels), fc(channels, 3, true, g) {
    this->register_module("conv", conv);
    this->register_module("bn", bn);
    this->register_module("fc", fc);
  }
  Var<T> operator()(const Var<T>& x) const { return fc(global_avg_pool(relu(bn(conv(x))))); }
};

/// One SGD step on a batch drawn from `data` (inputs and labels depend on the generator).
template <class T, class Opt>
void train_step(const Net<T>& net, Opt& opt, PhiloxGenerator& data) {
  Tensor<T> x = Tensor<T>::empty({4, 3, 5, 5});
  for (index_t i = 0; i < x.numel(); ++i) x[i] = T(data.normal());
  Tensor<std::int32_t> y = Tensor<std::int32_t>::empty({4});
  for (index_t i = 0; i < 4; ++i) y[i] = std::int32_t(data.next_block().v[0] % 3);
  opt.zero_grad();
  backward(cross_entropy(net(Var<T>(x)), y));
  opt.step();
}

/// All parameters and buffers of a module, by name, as copies.
template <class T>
std::vector<std::pair<std::string, Tensor<T>>> snapshot(const nn::Module<T>& m) {
  std::vector<std::pair<std::string, Tensor<T>>> out;
  m.visit_parameters(
      [&](const std::string& n, const Var<T>& v) { out.emplace_back(n, v.value().clone()); });
  m.visit_buffers(
      [&](const std::string& n, const Tensor<T>& t) { out.emplace_back(n, t.clone()); });
  return out;
}

/// An Adam-like optimiser with the accessors io::AdamCheckpointable asks for (optim::Adam
/// does not have them yet); it only holds state, which is what checkpointing touches.
template <class T, class D = Cpu>
class FakeAdam {
 public:
  explicit FakeAdam(std::vector<Var<T, D>> p)
      : params_(std::move(p)), m_(params_.size()), v_(params_.size()) {}
  [[nodiscard]] double lr() const { return lr_; }
  void set_lr(double lr) { lr_ = lr; }
  [[nodiscard]] const std::vector<Var<T, D>>& params() const { return params_; }
  std::vector<Tensor<T, D>>& exp_avg() { return m_; }
  std::vector<Tensor<T, D>>& exp_avg_sq() { return v_; }
  [[nodiscard]] long step_count() const { return t_; }
  void set_step_count(long t) { t_ = t; }

 private:
  std::vector<Var<T, D>> params_;
  std::vector<Tensor<T, D>> m_, v_;
  double lr_ = 1e-3;
  long t_ = 0;
};

/// With accessors added to optim::Adam, a resumed Adam run must match an uninterrupted one.
template <class T>
void check_real_adam_resume() {
  if constexpr (io::AdamCheckpointable<optim::Adam<T>, T>) {
    PhiloxGenerator init(1), data(42);
    Net<T> net(4, init);
    optim::Adam<T> adam(net.parameters(), 0.01);
    for (int i = 0; i < 2; ++i) train_step(net, adam, data);
    io::Checkpoint ck;
    io::put_module(ck, "model.", net);
    io::put_optimizer(ck, "optim.", adam);
    io::put_generator(ck, "data_rng", data);
    for (int i = 0; i < 2; ++i) train_step(net, adam, data);
    PhiloxGenerator init2(9), data2(0);
    Net<T> net2(4, init2);
    optim::Adam<T> adam2(net2.parameters(), 0.5);
    io::restore_module(ck, "model.", net2);
    io::restore_optimizer(ck, "optim.", adam2);
    io::restore_generator(ck, "data_rng", data2);
    for (int i = 0; i < 2; ++i) train_step(net2, adam2, data2);
    const auto a = snapshot<T>(net), b = snapshot<T>(net2);
    for (std::size_t i = 0; i < a.size(); ++i) CHECK(same_bits(a[i].second, b[i].second));
  } else {
    MESSAGE(
        "optim::Adam lacks lr(), params(), exp_avg(), exp_avg_sq(), set_step_count(): "
        "real Adam resume not tested");
  }
}
}  // namespace

TEST_SUITE("cpu") {
  TEST_CASE("every entry kind round-trips through a file bit for bit, in order") {
    const float fnan = std::bit_cast<float>(0x7fc01234u);
    const double dnan = std::bit_cast<double>(0x7ff8000000abcdefull);
    auto f32 =
        Tensor<float>::from({2, 3}, {1.5f, -0.0f, fnan, std::numeric_limits<float>::infinity(),
                                     std::numeric_limits<float>::denorm_min(), 3.0e38f});
    auto f64 = Tensor<double>::from({1, 2, 1, 2}, {dnan, -0.0, 1e-310, -1.0 / 3.0});
    auto i32 =
        Tensor<std::int32_t>::from({3}, {-7, std::numeric_limits<std::int32_t>::min(), 2147483647});
    auto scalar = Tensor<float>::from({}, {42.0f});
    auto empty = Tensor<double>::empty({0, 5});
    const std::string text = std::string("{\"normal\": [[\"sep_conv_3x3\", 0]]}\0tail\xce\xbb", 40);

    io::Checkpoint ck;
    ck.put("weights.f32", f32);
    ck.put("weights.f64", f64);
    ck.put("labels", i32);
    ck.put("scalar_tensor", scalar);
    ck.put("empty", empty);
    ck.put("epoch", 17);
    ck.put("min", std::numeric_limits<std::int64_t>::min());
    ck.put("seed", std::uint64_t(0xfedcba9876543210ull));
    ck.put("lr", 0.025);
    ck.put("nan", dnan);
    ck.put("neg_zero", -0.0);
    ck.put("genotype", text);
    ck.put("flags", "");
    ck.put("flag", true);
    const std::string path = tmp_path("roundtrip.ckpt");
    ck.save_atomic(path);
    CHECK_FALSE(fs::exists(path + ".tmp"));

    const auto back = io::Checkpoint::load(path);
    CHECK(back.names() == ck.names());
    CHECK(back.source() == path);
    CHECK(same_bits(back.get_tensor<float>("weights.f32"), f32));
    CHECK(same_bits(back.get_tensor<double>("weights.f64"), f64));
    CHECK(same_bits(back.get_tensor<std::int32_t>("labels"), i32));
    CHECK(same_bits(back.get_tensor<float>("scalar_tensor"), scalar));
    CHECK(back.shape("empty") == Shape{0, 5});
    CHECK(back.get_tensor<double>("empty").numel() == 0);
    CHECK(back.get_int("epoch") == 17);
    CHECK(back.get_int("min") == std::numeric_limits<std::int64_t>::min());
    CHECK(static_cast<std::uint64_t>(back.get_int("seed")) == 0xfedcba9876543210ull);
    CHECK(back.get_double("lr") == 0.025);
    CHECK(std::bit_cast<std::uint64_t>(back.get_double("nan")) == 0x7ff8000000abcdefull);
    CHECK(std::signbit(back.get_double("neg_zero")));
    CHECK(back.get_string("genotype") == text);
    CHECK(back.get_string("flags").empty());
    CHECK(back.get_int("flag") == 1);
    CHECK(back.kind("labels") == io::Checkpoint::Kind::kInt32Tensor);
    // get_tensor_into writes into existing storage, seen by every handle sharing it.
    auto dst = Tensor<float>::zeros({2, 3});
    const auto alias = dst.reshape({6});
    back.get_tensor_into("weights.f32", dst);
    CHECK(same_bits(alias.reshape({2, 3}), f32));
    // Serialisation is deterministic.
    CHECK(back.serialize() == ck.serialize());
    CHECK(read_bytes(path) == ck.serialize());
  }

  TEST_CASE("module + SGD + generator: a resumed run matches the uninterrupted one bit for bit") {
    PhiloxGenerator init(1), data(42);
    Net<float> net(4, init);
    optim::SGD<float> sgd(net.parameters(), 0.05, 0.9, 3e-4);
    for (int i = 0; i < 3; ++i) train_step(net, sgd, data);

    io::Checkpoint ck;
    io::put_module(ck, "model.", net);
    io::put_optimizer(ck, "optim.", sgd);
    io::put_generator(ck, "data_rng", data);
    ck.put("epoch", 3);
    const std::string path = tmp_path("resume.ckpt");
    ck.save_atomic(path);
    CHECK(ck.has("model.bn.running_var"));
    CHECK(ck.has("model.conv.weight"));
    CHECK(ck.has("optim.momentum_buffer.0"));
    for (int i = 0; i < 3; ++i) train_step(net, sgd, data);

    // A fresh process: another initialisation, learning rate and data seed, all overwritten.
    PhiloxGenerator init2(7), data2(0);
    Net<float> net2(4, init2);
    optim::SGD<float> sgd2(net2.parameters(), 0.5, 0.9, 3e-4);
    const auto loaded = io::Checkpoint::load(path);
    io::restore_module(loaded, "model.", net2);
    io::restore_optimizer(loaded, "optim.", sgd2);
    io::restore_generator(loaded, "data_rng", data2);
    CHECK(sgd2.lr() == sgd.lr());
    CHECK(loaded.get_int("epoch") == 3);
    for (int i = 0; i < 3; ++i) train_step(net2, sgd2, data2);

    const auto a = snapshot<float>(net), b = snapshot<float>(net2);
    REQUIRE(a.size() == b.size());
    REQUIRE(a.size() == 8);  // conv w, b; bn w, b; fc w, b; bn running mean, var
    for (std::size_t i = 0; i < a.size(); ++i) {
      INFO(a[i].first);
      CHECK(a[i].first == b[i].first);
      CHECK(same_bits(a[i].second, b[i].second));
    }
    for (std::size_t i = 0; i < sgd.momentum_buffers().size(); ++i)
      CHECK(same_bits(sgd.momentum_buffers()[i], sgd2.momentum_buffers()[i]));
    CHECK(data.offset() == data2.offset());
    CHECK(data.seed() == data2.seed());

    // Momentum buffers not yet created are restored as "not created".
    PhiloxGenerator init3(3);
    Net<float> net3(4, init3);
    optim::SGD<float> fresh(net3.parameters(), 0.1, 0.9);
    io::Checkpoint before_first_step;
    io::put_optimizer(before_first_step, "optim.", fresh);
    CHECK_FALSE(before_first_step.has("optim.momentum_buffer.0"));
    io::restore_optimizer(before_first_step, "optim.", sgd2);
    CHECK_FALSE(sgd2.momentum_buffers()[0].defined());
    CHECK(sgd2.lr() == 0.1);
  }

  TEST_CASE("module and optimiser mismatches are errors naming the entry") {
    PhiloxGenerator g(1);
    Net<float> net(4, g);
    io::Checkpoint ck("out/checkpoint");
    io::put_module(ck, "model.", net);
    Net<float> wider(8, g);
    CHECK_THROWS_WITH_AS(io::restore_module(ck, "model.", wider),
                         contains("checkpoint 'out/checkpoint': entry 'model.conv.weight' has "
                                  "shape [4, 3, 3, 3], expected [8, 3, 3, 3]"),
                         datanas::error);
    Net<double> as_double(4, g);
    CHECK_THROWS_WITH_AS(io::restore_module(ck, "model.", as_double),
                         contains("entry 'model.conv.weight' holds a value of kind 'float32 "
                                  "tensor', expected 'float64 tensor'"),
                         datanas::error);
    // The spec's example: a buffer of another size.
    io::Checkpoint bn_ck("out/checkpoint");
    bn_ck.put("cell3.bn.running_var", Tensor<float>::zeros({16}));
    CHECK_THROWS_WITH_AS(bn_ck.get_tensor_into("cell3.bn.running_var", Tensor<float>::zeros({32})),
                         contains("checkpoint 'out/checkpoint': entry 'cell3.bn.running_var' "
                                  "has shape [16], expected [32]"),
                         datanas::error);

    io::Checkpoint partial("p");
    io::put_module(partial, "model.", net);
    partial.put("model.extra.weight", Tensor<float>::zeros({1}));
    CHECK_THROWS_WITH_AS(io::restore_module(partial, "model.", net),
                         contains("entry 'model.extra.weight' matches no parameter or buffer"),
                         datanas::error);
    io::restore_module(partial, "model.", net, /*strict=*/false);

    io::Checkpoint missing("m");
    net.visit_parameters(
        [&](const std::string& n, const Var<float>& v) { missing.put("model." + n, v.value()); });
    CHECK_THROWS_WITH_AS(io::restore_module(missing, "model.", net),
                         contains("checkpoint 'm': no entry 'model.bn.running_mean'"),
                         datanas::error);

    optim::SGD<float> sgd(net.parameters(), 0.1, 0.9);
    io::Checkpoint opt_ck("o");
    io::put_optimizer(opt_ck, "optim.", sgd);
    std::vector<Var<float>> fewer = net.parameters();
    fewer.pop_back();
    optim::SGD<float> sgd_fewer(fewer, 0.1, 0.9);
    CHECK_THROWS_WITH_AS(io::restore_optimizer(opt_ck, "optim.", sgd_fewer),
                         contains("is for 6 parameters, the optimiser has 5"), datanas::error);
    FakeAdam<float> adam(net.parameters());
    CHECK_THROWS_WITH_AS(
        io::restore_optimizer(opt_ck, "optim.", adam),
        contains("entry 'optim.type' is 'sgd', but the optimiser being restored is adam"),
        datanas::error);
  }

  TEST_CASE("Adam-like optimiser state round-trips") {
    PhiloxGenerator g(1);
    Net<double> net(2, g);
    FakeAdam<double> adam(net.parameters());
    adam.set_lr(0.003);
    adam.set_step_count(123);
    for (std::size_t i = 0; i < adam.params().size(); ++i) {
      if (i == 1) continue;  // a parameter that never had a gradient keeps no state
      adam.exp_avg()[i] = Tensor<double>::full(adam.params()[i].shape(), 0.25 + double(i));
      adam.exp_avg_sq()[i] = Tensor<double>::full(adam.params()[i].shape(), 1e-9 * double(i));
    }
    io::Checkpoint ck;
    io::put_optimizer(ck, "arch_optim.", adam);
    FakeAdam<double> other(net.parameters());
    other.exp_avg()[1] = Tensor<double>::zeros(other.params()[1].shape());
    io::restore_optimizer(ck, "arch_optim.", other);
    CHECK(other.lr() == 0.003);
    CHECK(other.step_count() == 123);
    CHECK_FALSE(other.exp_avg()[1].defined());
    for (std::size_t i = 0; i < adam.params().size(); ++i) {
      if (i == 1) continue;
      CHECK(same_bits(other.exp_avg()[i], adam.exp_avg()[i]));
      CHECK(same_bits(other.exp_avg_sq()[i], adam.exp_avg_sq()[i]));
    }
    check_real_adam_resume<float>();
  }

  TEST_CASE("corrupt, truncated and foreign files are rejected with the file name") {
    io::Checkpoint ck;
    ck.put("w", Tensor<float>::from({4}, {1, 2, 3, 4}));
    ck.put("step", 5);
    const std::string path = tmp_path("good.ckpt");
    ck.save_atomic(path);
    const auto good = read_bytes(path);
    const std::string bad = tmp_path("bad.ckpt");

    auto flipped = good;
    flipped[good.size() - 3] ^= 0x10;  // inside the payload
    write_bytes(bad, flipped);
    CHECK_THROWS_WITH_AS(io::Checkpoint::load(bad),
                         contains("checkpoint '" + bad + "': payload checksum mismatch"),
                         datanas::error);

    auto header = good;
    header[17] ^= 0x01;  // the payload size
    write_bytes(bad, header);
    CHECK_THROWS_WITH_AS(io::Checkpoint::load(bad), contains("header checksum mismatch"),
                         datanas::error);

    write_bytes(bad, std::vector<unsigned char>(good.begin(), good.end() - 7));
    CHECK_THROWS_WITH_AS(
        io::Checkpoint::load(bad),
        contains("truncated: the header announces " + std::to_string(good.size() - 32) +
                 " payload bytes, the file has " + std::to_string(good.size() - 39)),
        datanas::error);
    write_bytes(bad, std::vector<unsigned char>(good.begin(), good.begin() + 10));
    CHECK_THROWS_WITH_AS(io::Checkpoint::load(bad),
                         contains("truncated: 10 bytes, the header alone is 32"), datanas::error);
    write_bytes(bad, {});
    CHECK_THROWS_WITH_AS(io::Checkpoint::load(bad), contains("truncated: 0 bytes"), datanas::error);

    auto longer = good;
    longer.push_back(0);
    write_bytes(bad, longer);
    CHECK_THROWS_WITH_AS(io::Checkpoint::load(bad), contains("1 unexpected bytes after"),
                         datanas::error);

    auto magic = good;
    magic[0] = 'X';
    write_bytes(bad, magic);
    CHECK_THROWS_WITH_AS(io::Checkpoint::load(bad),
                         contains("'" + bad + "': not a datanas checkpoint"), datanas::error);

    auto version = good;
    version[8] = 2;
    const auto crc = std::uint32_t(crc32(crc32(0L, Z_NULL, 0), version.data(), 28));
    for (int i = 0; i < 4; ++i)
      version[std::size_t(28 + i)] = static_cast<unsigned char>(crc >> (8 * i));
    write_bytes(bad, version);
    CHECK_THROWS_WITH_AS(io::Checkpoint::load(bad),
                         contains("format version 2, this build reads version 1"), datanas::error);

    CHECK_THROWS_WITH_AS(io::Checkpoint::load(tmp_path("nope.ckpt")),
                         contains("nope.ckpt': cannot open: No such file"), datanas::error);

    const auto loaded = io::Checkpoint::load(path);
    CHECK_THROWS_WITH_AS((void)loaded.get_int("epoch"),
                         contains("checkpoint '" + path + "': no entry 'epoch'"), datanas::error);
    CHECK_THROWS_WITH_AS((void)loaded.get_double("step"),
                         contains("entry 'step' holds a value of kind 'int64 scalar', expected "
                                  "'float64 scalar'"),
                         datanas::error);
    CHECK_THROWS_WITH_AS((void)loaded.get_string("w"), contains("kind 'float32 tensor'"),
                         datanas::error);
    CHECK_THROWS_WITH_AS((void)loaded.get_tensor<double>("w"),
                         contains("expected 'float64 tensor'"), datanas::error);
    CHECK_THROWS_WITH_AS((void)loaded.shape("step"), contains("not a tensor"), datanas::error);
    CHECK_FALSE(loaded.has("epoch"));
    CHECK(loaded.has("step"));
    io::Checkpoint dup;
    dup.put("a", 1);
    CHECK_THROWS_WITH_AS(dup.put("a", 2.0), contains("entry 'a' already exists"), datanas::error);
  }

  TEST_CASE("save_atomic: no .tmp left, stale .tmp ignored, failed writes keep the old file") {
    const std::string path = tmp_path("atomic.ckpt");
    io::Checkpoint first;
    first.put("epoch", 1);
    first.save_atomic(path);
    CHECK(fs::exists(path));
    CHECK_FALSE(fs::exists(path + ".tmp"));

    // A crashed run left half a file in path.tmp: loading path is unaffected, and the next save
    // replaces the stale file.
    write_bytes(path + ".tmp", {'D', 'N', 'A', 'S', 0, 1, 2});
    CHECK(io::Checkpoint::load(path).get_int("epoch") == 1);
    io::Checkpoint second;
    second.put("epoch", 2);
    second.save_atomic(path);
    CHECK_FALSE(fs::exists(path + ".tmp"));
    CHECK(io::Checkpoint::load(path).get_int("epoch") == 2);

    // A write that fails (path.tmp cannot be created: a directory is in the way, which stops
    // root too) leaves the previous checkpoint intact.
    fs::create_directory(path + ".tmp");
    io::Checkpoint third;
    third.put("epoch", 3);
    CHECK_THROWS_WITH_AS(third.save_atomic(path), contains("cannot create '" + path + ".tmp'"),
                         datanas::error);
    CHECK(io::Checkpoint::load(path).get_int("epoch") == 2);
    fs::remove(path + ".tmp");

    // A checkpoint in a directory that does not exist fails cleanly.
    CHECK_THROWS_AS(first.save_atomic(tmp_path("no/such/dir/x.ckpt")), datanas::error);
    fs::remove_all(tmp_dir());
  }
}
