#include "duration.h"

#include <gtest/gtest.h>

namespace outboxd {

TEST(Duration, ParsesUnitsAndSums) {
  EXPECT_EQ(ParseDuration("250ms"), Millis(250));
  EXPECT_EQ(ParseDuration("5s"), Millis(5000));
  EXPECT_EQ(ParseDuration("1m30s"), Millis(90'000));
  EXPECT_EQ(ParseDuration("24h"), Millis(86'400'000));
  EXPECT_EQ(ParseDuration("0s"), Millis(0));
}

TEST(Duration, RejectsWhatIsNotADuration) {
  EXPECT_FALSE(ParseDuration(""));
  EXPECT_FALSE(ParseDuration("5"));
  EXPECT_FALSE(ParseDuration("s"));
  EXPECT_FALSE(ParseDuration("5 s"));
  EXPECT_FALSE(ParseDuration("5sec"));
  EXPECT_FALSE(ParseDuration("-5s"));
}

TEST(Duration, FormatsShortest) {
  EXPECT_EQ(FormatDuration(Millis(1500)), "1500ms");
  EXPECT_EQ(FormatDuration(Millis(60'000)), "1m");
  EXPECT_EQ(FormatDuration(Millis(10'000)), "10s");
}

}  // namespace outboxd
