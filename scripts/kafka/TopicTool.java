// Creates a topic (run by scripts/kafka.sh create-topic with the broker's jars on the class path;
// Java runs this file from source). The project's brokers do not auto-create topics, as
// production brokers do not: whoever writes to a topic creates it first.
//   TopicTool <bootstrap> <topic> <partitions>
// The replication factor and the topic's settings are the broker's defaults. A topic that exists
// already is left as it is (exit 0, said on stderr), so a script may run again. Returns once every
// partition has a leader, so that a producer started next finds the topic whole.
import java.time.Duration;
import java.util.List;
import java.util.Optional;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.errors.UnknownTopicOrPartitionException;

public class TopicTool {
  static boolean Led(Admin admin, String name) throws Exception {
    try {
      TopicDescription d =
          admin.describeTopics(List.of(name)).allTopicNames().get(10, TimeUnit.SECONDS).get(name);
      return d.partitions().stream().allMatch(pi -> pi.leader() != null && !pi.leader().isEmpty());
    } catch (ExecutionException e) {
      if (e.getCause() instanceof UnknownTopicOrPartitionException) return false;
      throw e;
    }
  }

  public static void main(String[] args) throws Exception {
    if (args.length != 3) {
      System.err.println("usage: TopicTool <bootstrap> <topic> <partitions>");
      System.exit(2);
    }
    int partitions = Integer.parseInt(args[2]);
    Properties p = new Properties();
    p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
    Admin admin = Admin.create(p);
    try {
      try {
        NewTopic topic = new NewTopic(args[1], Optional.of(partitions), Optional.empty());
        admin.createTopics(List.of(topic)).all().get(60, TimeUnit.SECONDS);
      } catch (ExecutionException e) {
        if (!(e.getCause() instanceof TopicExistsException)) throw e;
        System.err.println("topic " + args[1] + " exists already: left as it is");
      }
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
      while (!Led(admin, args[1])) {
        if (System.nanoTime() > deadline) {
          System.err.println("topic " + args[1] + ": a partition has no leader after 60 s");
          System.exit(1);
        }
        Thread.sleep(100);
      }
    } finally {
      admin.close(Duration.ofSeconds(5));  // not forever when a request timed out
    }
  }
}
