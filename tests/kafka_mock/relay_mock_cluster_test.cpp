// Placeholder replaced by the kafka_mock suite.
#include <gtest/gtest.h>
