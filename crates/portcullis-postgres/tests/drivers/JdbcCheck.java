// pgJDBC through the gateway: prepared statements (server-side after prepareThreshold
// executions), a transaction and an error. Run as a single-file program:
// java -cp /usr/share/java/postgresql.jar JdbcCheck.java
import java.sql.*;

public class JdbcCheck {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT")
            + "/" + System.getenv("PGDATABASE") + "?sslmode=disable&prepareThreshold=3";
        try (Connection c = DriverManager.getConnection(url, System.getenv("PGUSER"), System.getenv("PGPASSWORD"))) {
            try (PreparedStatement ps = c.prepareStatement("select ?::int * 2, ?::text")) {
                for (int i = 0; i < 10; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "héllo");
                    try (ResultSet rs = ps.executeQuery()) {
                        check(rs.next(), "a row");
                        check(rs.getInt(1) == i * 2, "doubled");
                        check(rs.getString(2).equals("héllo"), "text");
                    }
                }
            }
            try (Statement st = c.createStatement()) {
                st.execute("create temp table t (id int)");
                c.setAutoCommit(false);
                st.execute("insert into t values (1)");
                c.commit();
                st.execute("insert into t values (2)");
                c.rollback();
                c.setAutoCommit(true);
                try (ResultSet rs = st.executeQuery("select count(*) from t")) {
                    check(rs.next() && rs.getInt(1) == 1, "one row after rollback");
                }
                try {
                    st.executeQuery("select 1/0");
                    check(false, "expected an error");
                } catch (SQLException e) {
                    check("22012".equals(e.getSQLState()), "SQLSTATE 22012, got " + e.getSQLState());
                }
                try (ResultSet rs = st.executeQuery("select 9")) {
                    check(rs.next() && rs.getInt(1) == 9, "session goes on");
                }
            }
        }
        System.out.println("ok jdbc");
    }

    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }
}
