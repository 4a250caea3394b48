// The sample programs' argument parser: values, choices and every kind of bad flag.
#include <doctest/doctest.h>

#include <sstream>

#include "datanas/io/args.hpp"
#include "datanas/io/run.hpp"

#include <filesystem>

using namespace datanas;

namespace {
struct Flags {
  std::string dataset = "fashion-mnist";
  long epochs = 2;
  double lr = 0.025;
  bool sparse = false;
  io::ArgParser parser{"prog", "test"};
  Flags() {
    parser.add_choice("dataset", &dataset, {"fashion-mnist", "cifar10"}, "data set")
        .add("epochs", &epochs, "epochs")
        .add("lr", &lr, "learning rate")
        .add("sparse", &sparse, "sparse mode");
  }
  bool parse(std::vector<const char*> a) {
    a.insert(a.begin(), "prog");
    std::ostringstream out;
    return parser.parse(int(a.size()), a.data(), out);
  }
};
}  // namespace

TEST_SUITE("cpu") {
TEST_CASE("flags parse in both spellings") {
  Flags f;
  CHECK(f.parse({"--epochs", "7", "--lr=0.5", "--sparse", "--dataset", "cifar10"}));
  CHECK(f.epochs == 7);
  CHECK(f.lr == 0.5);
  CHECK(f.sparse);
  CHECK(f.dataset == "cifar10");
  Flags h;
  CHECK_FALSE(h.parse({"--help"}));
}

TEST_CASE("--help shows every default exactly, small numbers included") {
  double tiny = 5e-7;
  Flags f;
  f.parser.add("wd", &tiny, "weight decay");
  std::ostringstream out;
  f.parser.usage(out);
  CHECK(out.str().find("(default: 5e-07)") != std::string::npos);
  CHECK(out.str().find("(default: 0.025)") != std::string::npos);
  CHECK(out.str().find("(default: 2)") != std::string::npos);
}

TEST_CASE("boolean flags switch on and off; given() tells what the command line set") {
  Flags f;
  CHECK(f.parse({"--sparse=true"}));
  CHECK(f.sparse);
  CHECK(f.parser.given("sparse"));
  CHECK_FALSE(f.parser.given("epochs"));
  CHECK(f.parse({"--no-sparse"}));
  CHECK_FALSE(f.sparse);
  CHECK(f.parse({"--sparse", "--sparse=0"}));
  CHECK_FALSE(f.sparse);
  CHECK_THROWS_AS((void)f.parser.given("nope"), datanas::error);
}

TEST_CASE("bad flags are named in the error") {
  CHECK_THROWS_WITH_AS(Flags().parse({"--epoch", "3"}), doctest::Contains("unknown flag --epoch"), datanas::error);
  CHECK_THROWS_WITH_AS(Flags().parse({"--epochs", "3x"}), doctest::Contains("--epochs: '3x' is not a valid integer"),
                       datanas::error);
  CHECK_THROWS_WITH_AS(Flags().parse({"--lr"}), doctest::Contains("--lr needs a value"), datanas::error);
  // from_chars reads these; a flag never means them (found by fuzzing).
  for (const char* v : {"--lr=nan", "--lr=inf", "--lr=-infinity", "--lr=NaN"})
    CHECK_THROWS_WITH_AS(Flags().parse({v}), doctest::Contains("' is not a finite number"),
                         datanas::error);
  CHECK_THROWS_WITH_AS(Flags().parse({"--lr", "1e999"}),
                       doctest::Contains("--lr: '1e999' is not a valid number"), datanas::error);
  CHECK_THROWS_WITH_AS(Flags().parse({"--dataset", "mnist"}),
                       doctest::Contains("'mnist' is not one of {fashion-mnist, cifar10}"), datanas::error);
  CHECK_THROWS_WITH_AS(Flags().parse({"--sparse=yes"}), doctest::Contains("--sparse: 'yes' is not true/false"),
                       datanas::error);
  CHECK_THROWS_WITH_AS(Flags().parse({"--no-epochs"}), doctest::Contains("unknown flag --no-epochs"), datanas::error);
  CHECK_THROWS_WITH_AS(Flags().parse({"epochs"}), doctest::Contains("unexpected argument 'epochs'"), datanas::error);
}

TEST_CASE("open_run: a fresh log, or a resumed checkpoint with its log trimmed to the checkpoint's epoch") {
  const std::string out = (std::filesystem::temp_directory_path() / "datanas_test_open_run").string();
  std::filesystem::remove_all(out);
  CHECK_FALSE(io::open_run(out, false, "flags=a", "epoch,loss").has_value());
  CHECK(io::read_text_file(out + "/log.csv") == "epoch,loss\n");
  io::append_line(out + "/log.csv", "1,0.5");
  io::append_line(out + "/log.csv", "2,0.4");
  io::append_line(out + "/log.csv", "3,stale row of an epoch whose checkpoint never landed");
  io::Checkpoint ck(out + "/checkpoint");
  ck.put("flags", "flags=a");
  ck.put("epoch", std::int64_t(2));
  ck.save_atomic(out + "/checkpoint");
  CHECK_THROWS_WITH_AS(io::open_run(out, true, "flags=b", "epoch,loss"),
                       doctest::Contains("was written with different flags:\n  saved: flags=a\n  now:   flags=b"),
                       datanas::error);
  const auto resumed = io::open_run(out, true, "flags=a", "epoch,loss");
  REQUIRE(resumed.has_value());
  CHECK(resumed->get_int("epoch") == 2);
  CHECK(io::read_text_file(out + "/log.csv") == "epoch,loss\n1,0.5\n2,0.4\n");
  CHECK(io::csv_quote("a \"b\", c") == "\"a \"\"b\"\", c\"");
  std::filesystem::remove_all(out);
  CHECK_THROWS_WITH_AS(io::open_run(out, true, "flags=a", "epoch"), doctest::Contains("--resume: no checkpoint at"),
                       datanas::error);
}
}
