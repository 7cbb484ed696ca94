// The Prometheus text format's escaping (sidecar/metrics.h, Exposition): a label value escapes the
// backslash, the double quote and the newline; a HELP text only the backslash and the newline.
#include <string>

#include <gtest/gtest.h>

#include "metrics.h"

namespace outboxd {
namespace {

TEST(Exposition, LabelValuesEscapeBackslashQuoteAndNewline) {
  EXPECT_EQ(Exposition::EscapeLabelValue("plain topic.name-1"), "plain topic.name-1");
  EXPECT_EQ(Exposition::EscapeLabelValue("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
  EXPECT_EQ(Exposition::EscapeLabelValue("\t\r'é"), "\t\r'é");
  EXPECT_EQ(Exposition::EscapeLabelValue(""), "");
}

TEST(Exposition, HelpEscapesBackslashAndNewlineButNotQuotes) {
  EXPECT_EQ(Exposition::EscapeHelp("Rows \"delivered\"\\ok\nnext"),
            "Rows \"delivered\"\\\\ok\\nnext");
  EXPECT_EQ(Exposition::EscapeHelp(""), "");
}

}  // namespace
}  // namespace outboxd
