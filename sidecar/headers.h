// Kafka headers of an outbox row: "outbox-id" and "outbox-created-at" first (together they
// identify the message, see docs/design.md "Message identity"), then every key of the row's jsonb
// headers with the value jsonb_each_text gives for it: a string unescaped, JSON null as a null
// header, anything else (numbers, booleans, arrays, objects) as its JSON text, unchanged. Numbers
// are never converted, so 1e400 or 12345678901234567890123 arrive exactly as PostgreSQL prints
// them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "outbox_store.h"
#include "publisher.h"
#include "status.h"

namespace outboxd {

// "outbox-id" and "outbox-created-at" of the row: what identifies it, even when its own headers
// are unusable (its dead-letter copy).
Headers IdentityHeaders(const OutboxRow& row);
// The row's Kafka headers; Permanent (poison) unless its headers are one JSON object.
Result<Headers> MessageHeaders(const OutboxRow& row);

// The key/value pairs of a JSON object in document order (jsonb's own order when the text comes
// from PostgreSQL); nullopt unless `json` is exactly one well-formed JSON object.
std::optional<Headers> ParseHeaderObject(std::string_view json);

}  // namespace outboxd
