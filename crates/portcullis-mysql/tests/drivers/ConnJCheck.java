// MariaDB Connector/J (Debian's libmariadb-java) with PreparedStatement and server-side
// prepares (useServerPrepStmts=true: COM_STMT_PREPARE / COM_STMT_EXECUTE, the binary
// protocol): a temporary table, typed values with NULLs, an emoji, a blob holding every
// byte value, JSON, DECIMAL and DATETIME(6) round-tripped through parameters; an error;
// 1000 rows. Run as a single-file program:
// java -cp /usr/share/java/mariadb-java-client.jar ConnJCheck.java
//
// Connection: MYSQL_HOST, MYSQL_PORT, MYSQL_USER, MYSQL_PASSWORD, MYSQL_DATABASE; with
// MYSQL_SSL_CA (a CA PEM file) it connects with TLS (useSsl=true, serverSslCert=<file>) and
// verifies the server's certificate and host name (trustServerCertificate and
// disableSslHostnameVerification stay false); without it TLS is off.
//
// Auth switch to mysql_clear_password: Connector/J 2.7 has the plugin built in
// (ClearPasswordPlugin, mustUseSsl() = true) and AbstractConnectProtocol refuses it only
// when the `useSsl` option was left unset ("Connector use a plugin that require SSL without
// enabling ssl. For compatibility, this can still be disabled explicitly forcing
// 'useSsl=false'"). So useSsl=true (with MYSQL_SSL_CA) answers it, and MYSQL_CLEARTEXT=1
// without a CA sets useSsl=false explicitly, which answers it in the clear. (Connector/J
// 2.7 has no restrictedAuth option.)
//
// On the wire (2.7, from the server's general log): the parameterless CREATE goes as
// COM_QUERY; the byte[] parameters (the empty one too) as COM_STMT_SEND_LONG_DATA; when
// COM_STMT_PREPARE fails (the missing table) the driver retries the statement as a
// client-side prepare, i.e. COM_QUERY, and the error the script sees comes from that.
//
// One line per check on stdout, every value as `Class:value` (byte[] in hex; the JVM's
// time zone is pinned to UTC, stdout is UTF-8 whatever the locale, and the source stays
// ASCII since the launcher compiles it in the locale's charset), so that a run straight
// against the database and a run through the gateway print the same text.
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.PrintStream;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.sql.*;
import java.util.*;

public class ConnJCheck {
    static final byte[] BLOB = new byte[300];
    static {
        for (int i = 0; i < BLOB.length; i++) BLOB[i] = (byte) (i % 256);
    }
    static final String JSON_DOC = "{\"a\": 1, \"b\": [true, null, \"x\"], \"c\": \"\\u00e9\"}";
    static final Object[][] ROWS = {
        {1, new BigDecimal("12345678.1234"), Timestamp.valueOf("2024-02-29 13:14:15.123456"), BLOB, JSON_DOC, "h\u00e9llo \uD83E\uDD80", 42},
        {2, null, null, null, null, null, null},
        {3, new BigDecimal("-0.0001"), Timestamp.valueOf("1999-12-31 23:59:59.999999"), new byte[0], "[]", "it's \"quoted\" \\ and\nnew line", Integer.MIN_VALUE},
    };
    static final int[] TYPES = {Types.INTEGER, Types.DECIMAL, Types.TIMESTAMP, Types.BLOB, Types.VARCHAR, Types.VARCHAR, Types.INTEGER};

    public static void main(String[] args) {
        try {
            run();
        } catch (Throwable e) {
            e.printStackTrace();
            System.err.println("ConnJCheck: FAILED (see the stack trace above)");
            System.exit(1);
        }
    }

    static void run() throws Exception {
        TimeZone.setDefault(TimeZone.getTimeZone("UTC"));
        System.setOut(new PrintStream(new FileOutputStream(FileDescriptor.out), true, StandardCharsets.UTF_8));
        String ca = System.getenv("MYSQL_SSL_CA");
        String url = "jdbc:mariadb://" + System.getenv("MYSQL_HOST") + ":" + System.getenv("MYSQL_PORT")
            + "/" + System.getenv("MYSQL_DATABASE") + "?useServerPrepStmts=true";
        if (ca != null && !ca.isEmpty()) {
            url += "&useSsl=true&serverSslCert=" + ca;
        } else if ("1".equals(System.getenv("MYSQL_CLEARTEXT"))) {
            url += "&useSsl=false";
        }
        String password = Objects.requireNonNullElse(System.getenv("MYSQL_PASSWORD"), "");
        try (Connection c = DriverManager.getConnection(url, System.getenv("MYSQL_USER"), password)) {
            try (PreparedStatement ps = c.prepareStatement(
                    "CREATE TEMPORARY TABLE t (id INT PRIMARY KEY, d DECIMAL(12,4), ts DATETIME(6), b BLOB,"
                    + " j JSON, s VARCHAR(100) CHARACTER SET utf8mb4, n INT NULL)")) {
                ps.execute();
            }
            System.out.println("create ok");
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO t (id, d, ts, b, j, s, n) VALUES (?, ?, ?, ?, ?, ?, ?)")) {
                for (Object[] row : ROWS) {
                    for (int i = 0; i < row.length; i++) {
                        if (row[i] == null) ps.setNull(i + 1, TYPES[i]);
                        else if (row[i] instanceof Integer) ps.setInt(i + 1, (Integer) row[i]);
                        else if (row[i] instanceof BigDecimal) ps.setBigDecimal(i + 1, (BigDecimal) row[i]);
                        else if (row[i] instanceof Timestamp) ps.setTimestamp(i + 1, (Timestamp) row[i]);
                        else if (row[i] instanceof byte[]) ps.setBytes(i + 1, (byte[]) row[i]);
                        else ps.setString(i + 1, (String) row[i]);
                    }
                    int n = ps.executeUpdate();
                    System.out.println("insert id=" + row[0] + " rowcount=" + n);
                    check(n == 1, "one row inserted");
                }
            }

            try (PreparedStatement ps = c.prepareStatement("SELECT id, d, ts, b, j, s, n FROM t WHERE id >= ? ORDER BY id")) {
                ps.setInt(1, 1);
                try (ResultSet rs = ps.executeQuery()) {
                    ResultSetMetaData md = rs.getMetaData();
                    StringBuilder cols = new StringBuilder("columns");
                    for (int i = 1; i <= md.getColumnCount(); i++) {
                        cols.append(' ').append(md.getColumnLabel(i)).append(':').append(md.getColumnTypeName(i));
                    }
                    System.out.println(cols);
                    int k = 0;
                    while (rs.next()) {
                        StringBuilder line = new StringBuilder("row");
                        for (int i = 1; i <= md.getColumnCount(); i++) {
                            Object v = rs.getObject(i);
                            line.append(' ').append(fmt(v));
                            check(same(v, ROWS[k][i - 1]), "row " + (k + 1) + " column " + i + " read back as written: " + fmt(v));
                        }
                        System.out.println(line);
                        k++;
                    }
                    check(k == ROWS.length, "three rows");
                }
            }

            try (PreparedStatement ps = c.prepareStatement("SELECT * FROM portcullis_missing_table WHERE id = ?")) {
                ps.setInt(1, 1);
                ps.executeQuery().close();
                check(false, "expected an error");
            } catch (SQLException e) {
                System.out.println("error errno=" + e.getErrorCode() + " sqlstate=" + e.getSQLState());
                check(e.getErrorCode() == 1146, "errno 1146, got " + e.getErrorCode() + ": " + e);
            }
            try (PreparedStatement ps = c.prepareStatement("SELECT ? + 1")) {
                ps.setInt(1, 41);
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next(), "a row");
                    System.out.println("after error " + fmt(rs.getObject(1)));
                }
            }

            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT seq, concat('row', seq) FROM seq_1_to_1000 WHERE seq >= ? ORDER BY seq")) {
                ps.setInt(1, 1);
                try (ResultSet rs = ps.executeQuery()) {
                    MessageDigest sha = MessageDigest.getInstance("SHA-256");
                    long count = 0, sum = 0;
                    String first = null, last = null;
                    while (rs.next()) {
                        String pair = fmt(rs.getObject(1)) + " " + fmt(rs.getObject(2));
                        if (first == null) first = pair;
                        last = pair;
                        count++;
                        sum += rs.getLong(1);
                        sha.update(rs.getString(2).getBytes(StandardCharsets.UTF_8));
                    }
                    System.out.println("first " + first + " last " + last);
                    System.out.println("seq count=" + count + " sum=" + sum + " sha256=" + hex(sha.digest()));
                    check(count == 1000, "1000 rows");
                }
            }
        }
        System.out.println("OK");
    }

    static String fmt(Object v) {
        if (v == null) return "null";
        String type = v.getClass().getSimpleName();
        if (v instanceof byte[]) return type + ":" + hex((byte[]) v);
        if (v instanceof Blob) {
            try {
                Blob b = (Blob) v;
                return type + ":" + hex(b.getBytes(1, (int) b.length()));
            } catch (SQLException e) {
                throw new RuntimeException(e);
            }
        }
        if (v instanceof String) return type + ":" + quote((String) v);
        return type + ":" + v;
    }

    static boolean same(Object got, Object want) {
        if (got == null || want == null) return got == want;
        if (got instanceof byte[] && want instanceof byte[]) return Arrays.equals((byte[]) got, (byte[]) want);
        if (got instanceof BigDecimal && want instanceof BigDecimal) return ((BigDecimal) got).compareTo((BigDecimal) want) == 0;
        if (got instanceof Number && want instanceof Number) return ((Number) got).longValue() == ((Number) want).longValue();
        return got.equals(want);
    }

    static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            switch (ch) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                default: b.append(ch);
            }
        }
        return b.append('"').toString();
    }

    static String hex(byte[] bytes) {
        StringBuilder b = new StringBuilder();
        for (byte x : bytes) b.append(String.format("%02x", x & 0xff));
        return b.toString();
    }

    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }
}
