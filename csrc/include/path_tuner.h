// Picks, per problem, the fastest of a few interchangeable implementations by timing
// them on the first call that needs the choice, the way cudnn.benchmark picks cuDNN's
// convolution algorithm.
//
// Why: which of fastgan's GEMM path and the library's (oneDNN) convolutions is faster for
// a transposed-convolution layer changed from machine to machine of the same "2-core VM"
// kind: on an AVX2 EPYC oneDNN's NHWC kernels beat its NCHW ones by 1.4-2x and our GEMM
// path beat both on some layers; on an AVX-512 EPYC its NCHW kernels ran at the compute
// ceiling and our GEMM backward lost 15% on the wide layers. No fixed rule held on every
// machine, and the repository lands on whichever one CI or a user has.
//
// Cost: the first call for a key runs every candidate four times (one untimed round for
// JIT compilation and first-touch page faults, then three interleaved timed rounds; the
// best time per candidate counts, since on a shared VM a candidate's time drifts by up to
// 2x from minute to minute, and the fastest of three interleaved runs is the most stable) and then the chosen one once more for the result, so
// the result always comes from the recorded choice. Later calls pay one map lookup.
// Results of different candidates differ in rounding only; for bitwise reproducibility
// across processes turn tuning off (FASTGAN_CT_TUNE=0 for the transposed convolution).
#pragma once

#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace fastgan {

class PathTuner {
 public:
  // The recorded choice for key, or -1 when there is none yet.
  int find(const std::string& key) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(key);
    return it == entries_.end() ? -1 : it->second.choice;
  }

  // Times run(i) for each candidate i (names[i]), records and returns the fastest. The
  // lock is not held while the candidates run (they use every thread and may take long);
  // two threads tuning the same key at once both measure, and the last one's record stays.
  int tune(const std::string& key, const std::vector<std::string>& names, const std::function<void(int)>& run) {
    const int n = static_cast<int>(names.size());
    std::vector<double> best(n, 1e300);
    for (int round = 0; round < 4; ++round) {
      for (int i = 0; i < n; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        run(i);
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (round > 0 && ms < best[i]) best[i] = ms;
      }
    }
    int choice = 0;
    for (int i = 1; i < n; ++i)
      if (best[i] < best[choice]) choice = i;
    std::lock_guard<std::mutex> lock(mu_);
    entries_[key] = Entry{choice, names, best};
    return choice;
  }

  // One line per key: "key: chosen (name ms, name ms, ...)".
  std::string report() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::string out;
    for (const auto& kv : entries_) {
      out += kv.first + ": " + kv.second.names[kv.second.choice] + " (";
      for (size_t i = 0; i < kv.second.names.size(); ++i) {
        char buf[64];
        std::snprintf(buf, sizeof(buf), "%s%s %.3f ms", i ? ", " : "", kv.second.names[i].c_str(), kv.second.ms[i]);
        out += buf;
      }
      out += ")\n";
    }
    return out;
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    entries_.clear();
  }

 private:
  struct Entry {
    int choice;
    std::vector<std::string> names;
    std::vector<double> ms;
  };
  mutable std::mutex mu_;
  std::map<std::string, Entry> entries_;
};

}  // namespace fastgan
