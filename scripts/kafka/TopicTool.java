// Creates a topic on the local brokers, which do not create topics on first use (as production
// brokers don't). Run by scripts/kafka.sh create-topic with the broker's jars on the class path;
// Java runs this file from source. kcat cannot create topics.
//   TopicTool <bootstrap> <topic> <partitions>
// A topic that exists already is left as it is (exit 0) when it has that many partitions; with
// another count it is an error (exit 1): the caller asked for something the topic is not.
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

public class TopicTool {
  public static void main(String[] args) throws Exception {
    if (args.length != 3) {
      System.err.println("usage: TopicTool <bootstrap> <topic> <partitions>");
      System.exit(2);
    }
    String topic = args[1];
    int partitions = Integer.parseInt(args[2]);
    Properties p = new Properties();
    p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
    Admin admin = Admin.create(p);
    try {
      try {
        // The broker's default replication factor (scripts/kafka.sh sets it per mode).
        admin.createTopics(List.of(new NewTopic(topic, Optional.of(partitions), Optional.empty())))
            .all().get(60, TimeUnit.SECONDS);
        System.out.println("created topic " + topic + " (" + partitions + " partitions)");
      } catch (ExecutionException e) {
        if (!(e.getCause() instanceof TopicExistsException)) throw e;
        TopicDescription d = admin.describeTopics(List.of(topic)).allTopicNames()
            .get(60, TimeUnit.SECONDS).get(topic);
        int have = d.partitions().size();
        if (have != partitions) {
          System.err.println("topic " + topic + " exists with " + have + " partitions, not " + partitions);
          System.exit(1);
        }
        System.out.println("topic " + topic + " exists (" + have + " partitions)");
      }
    } finally {
      admin.close(Duration.ofSeconds(5));  // not forever when a request timed out
    }
  }
}
