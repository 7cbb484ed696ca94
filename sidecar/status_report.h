// `outboxd status`: what waits in the outbox, read from PostgreSQL on a short-lived connection
// of the calling thread: the backlog, dead letters, and prepared (half) messages with their age,
// check count and next check.
#pragma once

#include <ostream>
#include <string>

#include "config.h"
#include "pg/connection.h"
#include "status.h"

namespace outboxd {

// The application_name of the leader's connection: "outboxd host=<hostname> pid=<pid>", so that
// `outboxd status` shows which process leads (PostgreSQL only knows its own backend's pid).
std::string InstanceApplicationName();

// Writes the report as readable tables; at most `max_prepared_rows` prepared messages are listed.
Status WriteStatusReport(pg::Connection& conn, const Config& config, std::ostream& out,
                         int max_prepared_rows = 50);

}  // namespace outboxd
