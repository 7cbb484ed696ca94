// create_topic BOOTSTRAP TOPIC PARTITIONS [REPLICAS]: CreateTopic (support/integration.h) for the
// test scripts. The project's brokers do not auto-create topics: a script that writes to a topic
// creates it first, the same way the C++ tests do. REPLICAS -1 (the default) takes the broker's
// default.replication.factor. Exit 0 once every partition has a leader, 1 on an error.
#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>

#include "integration.h"

int main(int argc, char** argv) {
  if (argc < 4 || argc > 5) {
    std::cerr << "usage: create_topic BOOTSTRAP TOPIC PARTITIONS [REPLICAS]\n";
    return 2;
  }
  outboxd::testing::Services services;
  services.kafka_bootstrap = argv[1];
  try {
    outboxd::testing::CreateTopic(services, argv[2], std::stoi(argv[3]),
                                  argc == 5 ? std::stoi(argv[4]) : -1);
  } catch (const std::exception& e) {
    std::cerr << "create_topic: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
