// The rules of INTERFACE.md's `[policy]` example, as code. Shared by the policy tests and
// the `classify` bench through `include!` (the includer brings `Rule`, `Action` and `Mode`
// into scope); not a module of the crate.

/// The six rules of INTERFACE.md's `[policy]` example, in order.
fn example_rules() -> Vec<Rule> {
    vec![
        Rule::new("no-drop", Action::Deny).statements(["drop", "truncate"]),
        Rule::new("unbounded-writes", Action::Approve)
            .statements(["delete", "update"])
            .without_where(true)
            .approvers(["dba"], 1),
        Rule::new("analysts-read-only", Action::Deny)
            .groups(["analysts"])
            .statements(["write", "ddl", "admin"]),
        Rule::new("dba-may-read-files", Action::Allow)
            .groups(["dba"])
            .functions(["pg_read_file"]),
        Rule::new("no-file-access", Action::Deny).functions([
            "pg_read_file",
            "pg_read_binary_file",
            "pg_ls_dir",
            "lo_import",
            "lo_export",
        ]),
        Rule::new("payments-approval", Action::Approve)
            .tables(["billing.*"])
            .statements(["write"])
            .approvers(["finance-leads"], 1)
            .mode(Mode::Detect),
    ]
}
