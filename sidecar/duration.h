// Durations written as in the configuration file: "250ms", "5s", "1m", "24h", "1h30m".
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace outboxd {

using Millis = std::chrono::milliseconds;

// Parses a duration; nullopt when the text is not one.
std::optional<Millis> ParseDuration(std::string_view text);
// The shortest exact spelling, e.g. 1500ms -> "1500ms", 60000ms -> "1m".
std::string FormatDuration(Millis d);

}  // namespace outboxd
