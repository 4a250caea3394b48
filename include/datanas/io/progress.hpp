// datanas/io/progress.hpp - a one-line progress bar: step, loss, accuracy, images/s, ETA.
// On a terminal it redraws in place; otherwise (logs, CI) it prints a line every ~10%.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace datanas::io {

class ProgressBar {
 public:
  ProgressBar(std::string label, long total_steps, FILE* out = stderr)
      : label_(std::move(label)), total_(total_steps), out_(out), tty_(isatty(fileno(out)) != 0),
        start_(std::chrono::steady_clock::now()) {}

  /// Reports step `step` (1-based) with running averages of loss and accuracy (in [0, 1]).
  void update(long step, double loss, double accuracy, long images_so_far) {
    const double secs = elapsed();
    const double ips = secs > 0 ? images_so_far / secs : 0.0;
    const double eta = step > 0 ? secs * double(total_ - step) / double(step) : 0.0;
    const bool last = step >= total_;
    const long decile = total_ > 0 ? step * 10 / total_ : 10;
    if (!tty_ && !last && decile == last_decile_) return;
    last_decile_ = decile;
    const int width = 24, filled = total_ > 0 ? int(width * step / total_) : width;
    std::string bar(std::size_t(filled), '#');
    bar.resize(width, '.');
    std::fprintf(out_, "%s%s [%s] %ld/%ld loss %.4f acc %5.1f%% %6.0f %s/s ETA %s%s",
                 tty_ ? "\r" : "", label_.c_str(), bar.c_str(), step, total_, loss,
                 100.0 * accuracy, ips, unit_.c_str(), format_time(eta).c_str(), tty_ && !last ? "" : "\n");
    std::fflush(out_);
  }
  /// What the throughput counts ("img" by default; "tok" for language models).
  ProgressBar& set_unit(std::string unit) {
    unit_ = std::move(unit);
    return *this;
  }
  [[nodiscard]] double elapsed() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

  static std::string format_time(double s) {
    char buf[32];
    const long t = long(s + 0.5);
    if (t >= 3600)
      std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else
      std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
    return buf;
  }

 private:
  std::string label_;
  std::string unit_ = "img";
  long total_;
  FILE* out_;
  bool tty_;
  long last_decile_ = -1;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace datanas::io
