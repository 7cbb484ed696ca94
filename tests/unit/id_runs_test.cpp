// ToRuns: the acknowledged ids as runs of consecutive values, for the removal statement.
#include <gtest/gtest.h>
#include <algorithm>

#include "outbox_store.h"

namespace outboxd {
namespace {

TEST(IdRuns, ConsecutiveIdsBecomeOneRunInAnyOrder) {
  IdRuns r = ToRuns({7, 1, 3, 2, 9, 10, 3});
  EXPECT_EQ(r.starts, (std::vector<int64_t>{1, 7, 9}));
  EXPECT_EQ(r.ends, (std::vector<int64_t>{3, 7, 10}));
}

TEST(IdRuns, NoIdsNoRuns) {
  IdRuns r = ToRuns({});
  EXPECT_TRUE(r.starts.empty());
  EXPECT_TRUE(r.ends.empty());
}

TEST(IdRuns, EveryIdInARunWasNamedAndEveryNamedIdIsInARun) {
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 2000; ++i) {
    if ((i * 7919) % 11 < 8) ids.push_back(1'000'000 + (i * 7919) % 2000);
  }
  IdRuns r = ToRuns(ids);
  std::vector<int64_t> expanded;
  for (size_t i = 0; i < r.starts.size(); ++i) {
    ASSERT_LE(r.starts[i], r.ends[i]);
    if (i > 0) {
      ASSERT_GT(r.starts[i], r.ends[i - 1] + 1) << "runs are separated by a missing id";
    }
    for (int64_t id = r.starts[i]; id <= r.ends[i]; ++id) expanded.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  EXPECT_EQ(expanded, ids);
}

}  // namespace
}  // namespace outboxd
