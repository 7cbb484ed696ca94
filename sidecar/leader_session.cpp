#include "leader_session.h"

namespace outboxd {

std::string LeaderHoldsLockSql(int first) {
  const std::string key = "$" + std::to_string(first) + "::bigint";
  const std::string pid = "$" + std::to_string(first + 1) + "::int";
  const std::string start = "$" + std::to_string(first + 2) + "::numeric";
  // pg_locks shows a bigint advisory key as its high half in classid, its low half in objid,
  // objsubid 1.
  return "EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
         " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
         " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
         " AND l.classid::bigint = (" +
         key +
         " >> 32) & 4294967295"
         " AND l.objid::bigint = " +
         key +
         " & 4294967295"
         " AND l.pid = " +
         pid + " AND extract(epoch FROM a.backend_start) = " + start + ")";
}

}  // namespace outboxd
