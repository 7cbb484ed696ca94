// ACLs of the secure broker, as its super user (run by scripts/kafka.sh acl with the broker's jars
// on the class path; Java runs this file from source). librdkafka 2.0.2's admin API cannot name a
// transactional id as a resource, Kafka's Java admin client can.
//   AclTool <bootstrap> (add <principal> (<TYPE> <name> <OPERATION>)... | delete <principal>)...
// TYPE: TOPIC, GROUP, CLUSTER, TRANSACTIONAL_ID (name "*": every one; "abc*": prefix abc); OPERATION: READ, WRITE,
// CREATE, DESCRIBE, IDEMPOTENT_WRITE, ALL, ... (org.apache.kafka.common.acl.AclOperation).
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AccessControlEntryFilter;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourcePatternFilter;
import org.apache.kafka.common.resource.ResourceType;

public class AclTool {
  static void usage() {
    System.err.println("usage: AclTool <bootstrap> (add <principal> (<TYPE> <name> <OPERATION>)... "
        + "| delete <principal>)...");
    System.exit(2);
  }

  // "*" alone: every resource of the type (literal wildcard); "abc*": the prefix abc.
  static ResourcePattern Pattern(ResourceType type, String name) {
    if (type == ResourceType.CLUSTER) return new ResourcePattern(type, "kafka-cluster", PatternType.LITERAL);
    if (name.length() > 1 && name.endsWith("*")) {
      return new ResourcePattern(type, name.substring(0, name.length() - 1), PatternType.PREFIXED);
    }
    return new ResourcePattern(type, name, PatternType.LITERAL);
  }

  public static void main(String[] args) throws Exception {
    if (args.length < 3) usage();
    List<AclBinding> add = new ArrayList<>();
    List<AclBindingFilter> delete = new ArrayList<>();
    int i = 1;
    while (i < args.length) {
      String command = args[i];
      if (i + 1 >= args.length || !(command.equals("add") || command.equals("delete"))) usage();
      String principal = args[i + 1];
      i += 2;
      if (command.equals("delete")) {
        delete.add(new AclBindingFilter(ResourcePatternFilter.ANY,
            new AccessControlEntryFilter(principal, null, AclOperation.ANY, AclPermissionType.ANY)));
        continue;
      }
      int start = i;
      while (i + 2 < args.length && !args[i].equals("add") && !args[i].equals("delete")) {
        add.add(new AclBinding(Pattern(ResourceType.valueOf(args[i]), args[i + 1]),
            new AccessControlEntry(principal, "*", AclOperation.valueOf(args[i + 2]),
                AclPermissionType.ALLOW)));
        i += 3;
      }
      if (i == start || (i < args.length && !args[i].equals("add") && !args[i].equals("delete"))) {
        usage();
      }
    }
    Properties p = new Properties();
    p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
    Admin admin = Admin.create(p);
    try {
      if (!delete.isEmpty()) admin.deleteAcls(delete).all().get(60, TimeUnit.SECONDS);
      if (!add.isEmpty()) admin.createAcls(add).all().get(60, TimeUnit.SECONDS);
    } finally {
      admin.close(Duration.ofSeconds(5));  // not forever when a request timed out
    }
  }
}
