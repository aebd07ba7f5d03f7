//! One table of every statement type PostgreSQL's parser returns: the kind and class a
//! statement of that type gets. The walk over the parse tree adds what depends on the
//! statement's details (a `SELECT … INTO`, a `COPY … PROGRAM`, a `SET` of a setting that
//! changes how SQL is read, the functions called, …).
//!
//! The table is also an exhaustive `match` over `pg_query`'s node enum, without a wildcard:
//! a parser upgrade that adds a node type does not compile until the type is placed here,
//! either as a statement with its class or among the nodes that are not statements. A test
//! runs one example statement of every type against the table.

use crate::classify::Class;

/// How a statement type is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementType {
    /// The parse node's type name (`SelectStmt`).
    pub node: &'static str,
    /// The kind its statements get (empty: decided by the statement's details, e.g. `COPY`
    /// is `copy_from` or `copy_to`).
    pub kind: &'static str,
    /// The class its statements get at least.
    pub class: Class,
    /// It defines or runs code the text does not show (kind `dynamic` too).
    pub dynamic: bool,
    /// Why, for messages.
    pub reason: &'static str,
}

macro_rules! statement_types {
    (
        $( $node:ident => $kind:literal, $class:ident, $dynamic:literal, $reason:literal; )*
        ; not statements: $( $other:ident ),* $(,)?
    ) => {
        /// Every statement type, in the parser's order.
        pub const STATEMENT_TYPES: &[StatementType] = &[
            $( StatementType {
                node: stringify!($node),
                kind: $kind,
                class: Class::$class,
                dynamic: $dynamic,
                reason: $reason,
            }, )*
        ];

        /// The statement type named `node` (a parse node's type name), if it is one.
        pub fn statement_type(node: &str) -> Option<StatementType> {
            match node {
                $( stringify!($node) => Some(StatementType {
                    node: stringify!($node),
                    kind: $kind,
                    class: Class::$class,
                    dynamic: $dynamic,
                    reason: $reason,
                }), )*
                _ => None,
            }
        }

        /// The statement type of a parse node (`None` for a node that is not a statement).
        pub(crate) fn statement_type_of(node: &pg_query::NodeEnum) -> Option<StatementType> {
            match node {
                $( pg_query::NodeEnum::$node(_) => statement_type(stringify!($node)), )*
                $( pg_query::NodeEnum::$other(_) )|* => None,
            }
        }
    };
}

statement_types! {
    InsertStmt => "insert", Write, false, "INSERT";
    DeleteStmt => "delete", Write, false, "DELETE";
    UpdateStmt => "update", Write, false, "UPDATE";
    MergeStmt => "merge", Write, false, "MERGE";
    SelectStmt => "select", Read, false, "reads only";
    CreateSchemaStmt => "create", Ddl, false, "changes the schema";
    AlterTableStmt => "alter", Ddl, false, "changes the schema";
    AlterCollationStmt => "alter", Ddl, false, "changes the schema";
    AlterDomainStmt => "alter", Ddl, false, "changes the schema";
    GrantStmt => "grant", Ddl, false, "GRANT / REVOKE";
    GrantRoleStmt => "grant", Admin, false, "GRANT / REVOKE of a role";
    AlterDefaultPrivilegesStmt => "alter_default_privileges_stmt", Admin, false, "administration";
    CopyStmt => "", Read, false, "COPY";
    VariableSetStmt => "set", Read, false, "SET";
    VariableShowStmt => "show", Read, false, "SHOW";
    CreateStmt => "create", Ddl, false, "changes the schema";
    CreateTableSpaceStmt => "create_table_space_stmt", Admin, false, "administration";
    DropTableSpaceStmt => "drop", Ddl, false, "DROP";
    AlterTableSpaceOptionsStmt => "alter", Ddl, false, "changes the schema";
    AlterTableMoveAllStmt => "alter", Ddl, false, "changes the schema";
    CreateExtensionStmt => "create_extension_stmt", Admin, false, "administration";
    AlterExtensionStmt => "alter_extension_stmt", Admin, false, "administration";
    AlterExtensionContentsStmt => "alter_extension_contents_stmt", Admin, false, "administration";
    CreateFdwStmt => "create_fdw_stmt", Admin, false, "administration";
    AlterFdwStmt => "alter_fdw_stmt", Admin, false, "administration";
    CreateForeignServerStmt => "create_foreign_server_stmt", Admin, false, "administration";
    AlterForeignServerStmt => "alter_foreign_server_stmt", Admin, false, "administration";
    CreateForeignTableStmt => "create", Ddl, false, "changes the schema";
    CreateUserMappingStmt => "create_user_mapping_stmt", Admin, false, "administration";
    AlterUserMappingStmt => "alter_user_mapping_stmt", Admin, false, "administration";
    DropUserMappingStmt => "drop", Ddl, false, "DROP";
    ImportForeignSchemaStmt => "import_foreign_schema_stmt", Admin, false, "administration";
    CreatePolicyStmt => "create", Ddl, false, "changes the schema";
    AlterPolicyStmt => "alter", Ddl, false, "changes the schema";
    CreateAmStmt => "create_am_stmt", Admin, false, "administration";
    CreateTrigStmt => "create_trig_stmt", Admin, true, "defines code that runs later";
    CreateEventTrigStmt => "create_event_trig_stmt", Admin, true, "defines code that runs later";
    AlterEventTrigStmt => "alter_event_trig_stmt", Admin, false, "administration";
    CreatePlangStmt => "create_plang_stmt", Admin, true, "defines code that runs later";
    CreateRoleStmt => "create_role_stmt", Admin, false, "administration";
    AlterRoleStmt => "alter_role_stmt", Admin, false, "administration";
    AlterRoleSetStmt => "alter_role_set_stmt", Admin, false, "administration";
    DropRoleStmt => "drop_role_stmt", Admin, false, "administration";
    CreateSeqStmt => "create", Ddl, false, "changes the schema";
    AlterSeqStmt => "alter", Ddl, false, "changes the schema";
    DefineStmt => "define_stmt", Admin, true, "defines code that runs later";
    CreateDomainStmt => "create", Ddl, false, "changes the schema";
    CreateOpClassStmt => "create_op_class_stmt", Admin, false, "administration";
    CreateOpFamilyStmt => "create_op_family_stmt", Admin, false, "administration";
    AlterOpFamilyStmt => "alter_op_family_stmt", Admin, false, "administration";
    DropStmt => "drop", Ddl, false, "DROP";
    TruncateStmt => "truncate", Write, false, "TRUNCATE";
    CommentStmt => "alter", Ddl, false, "changes the schema";
    SecLabelStmt => "alter", Ddl, false, "changes the schema";
    DeclareCursorStmt => "cursor", Read, false, "DECLARE CURSOR";
    ClosePortalStmt => "cursor", Read, false, "CLOSE";
    FetchStmt => "fetch", Read, false, "FETCH / MOVE";
    IndexStmt => "create", Ddl, false, "changes the schema";
    CreateStatsStmt => "create", Ddl, false, "changes the schema";
    AlterStatsStmt => "alter", Ddl, false, "changes the schema";
    CreateFunctionStmt => "create_function_stmt", Admin, true, "defines code that runs later";
    AlterFunctionStmt => "alter", Ddl, false, "changes the schema";
    DoStmt => "do", Admin, true, "a DO block runs code";
    CallStmt => "call", Admin, true, "CALL runs a procedure";
    RenameStmt => "alter", Ddl, false, "changes the schema";
    AlterObjectDependsStmt => "alter", Ddl, false, "changes the schema";
    AlterObjectSchemaStmt => "alter", Ddl, false, "changes the schema";
    AlterOwnerStmt => "alter_owner_stmt", Admin, false, "administration";
    AlterOperatorStmt => "alter", Ddl, false, "changes the schema";
    AlterTypeStmt => "alter", Ddl, false, "changes the schema";
    RuleStmt => "rule_stmt", Admin, true, "defines code that runs later";
    NotifyStmt => "notify", Write, false, "NOTIFY";
    ListenStmt => "listen", Read, false, "LISTEN";
    UnlistenStmt => "listen", Read, false, "UNLISTEN";
    TransactionStmt => "transaction", Read, false, "transaction control";
    CompositeTypeStmt => "create", Ddl, false, "changes the schema";
    CreateEnumStmt => "create", Ddl, false, "changes the schema";
    CreateRangeStmt => "create", Ddl, false, "changes the schema";
    AlterEnumStmt => "alter", Ddl, false, "changes the schema";
    ViewStmt => "create", Ddl, false, "changes the schema";
    LoadStmt => "load_stmt", Admin, false, "administration";
    CreatedbStmt => "createdb_stmt", Admin, false, "administration";
    AlterDatabaseStmt => "alter_database_stmt", Admin, false, "administration";
    AlterDatabaseRefreshCollStmt => "alter", Ddl, false, "changes the schema";
    AlterDatabaseSetStmt => "alter_database_set_stmt", Admin, false, "administration";
    DropdbStmt => "drop", Ddl, false, "DROP";
    AlterSystemStmt => "alter_system_stmt", Admin, false, "administration";
    ClusterStmt => "cluster_stmt", Admin, false, "administration";
    VacuumStmt => "vacuum_stmt", Admin, false, "administration";
    ExplainStmt => "", Read, false, "EXPLAIN";
    CreateTableAsStmt => "create", Ddl, false, "changes the schema";
    RefreshMatViewStmt => "refresh", Write, false, "REFRESH MATERIALIZED VIEW";
    CheckPointStmt => "check_point_stmt", Admin, false, "administration";
    DiscardStmt => "discard", Read, false, "DISCARD";
    LockStmt => "lock", Write, false, "LOCK";
    ConstraintsSetStmt => "constraints_set_stmt", Read, false, "SET CONSTRAINTS";
    ReindexStmt => "reindex_stmt", Admin, false, "administration";
    CreateConversionStmt => "create_conversion_stmt", Admin, false, "administration";
    CreateCastStmt => "create_cast_stmt", Admin, true, "defines code that runs later";
    CreateTransformStmt => "create_transform_stmt", Admin, true, "defines code that runs later";
    PrepareStmt => "prepare", Read, false, "PREPARE";
    ExecuteStmt => "execute", Admin, false, "EXECUTE of a prepared statement the classifier cannot see";
    DeallocateStmt => "deallocate", Read, false, "DEALLOCATE";
    DropOwnedStmt => "drop", Ddl, false, "DROP";
    ReassignOwnedStmt => "reassign_owned_stmt", Admin, false, "administration";
    AlterTsdictionaryStmt => "alter", Ddl, false, "changes the schema";
    AlterTsconfigurationStmt => "alter", Ddl, false, "changes the schema";
    CreatePublicationStmt => "create_publication_stmt", Admin, false, "administration";
    AlterPublicationStmt => "alter_publication_stmt", Admin, false, "administration";
    CreateSubscriptionStmt => "create_subscription_stmt", Admin, false, "administration";
    AlterSubscriptionStmt => "alter_subscription_stmt", Admin, false, "administration";
    DropSubscriptionStmt => "drop", Ddl, false, "DROP";
    ; not statements:
    Alias, RangeVar, TableFunc, IntoClause, Var, Param, Aggref, GroupingFunc, WindowFunc,
    WindowFuncRunCondition, MergeSupportFunc, SubscriptingRef, FuncExpr, NamedArgExpr, OpExpr,
    DistinctExpr, NullIfExpr, ScalarArrayOpExpr, BoolExpr, SubLink, SubPlan, AlternativeSubPlan,
    FieldSelect, FieldStore, RelabelType, CoerceViaIo, ArrayCoerceExpr, ConvertRowtypeExpr,
    CollateExpr, CaseExpr, CaseWhen, CaseTestExpr, ArrayExpr, RowExpr, RowCompareExpr,
    CoalesceExpr, MinMaxExpr, SqlvalueFunction, XmlExpr, JsonFormat, JsonReturning,
    JsonValueExpr, JsonConstructorExpr, JsonIsPredicate, JsonBehavior, JsonExpr, JsonTablePath,
    JsonTablePathScan, JsonTableSiblingJoin, NullTest, BooleanTest, MergeAction, CoerceToDomain,
    CoerceToDomainValue, SetToDefault, CurrentOfExpr, NextValueExpr, InferenceElem, TargetEntry,
    RangeTblRef, JoinExpr, FromExpr, OnConflictExpr, Query, TypeName, ColumnRef, ParamRef,
    AExpr, TypeCast, CollateClause, RoleSpec, FuncCall, AStar, AIndices, AIndirection,
    AArrayExpr, ResTarget, MultiAssignRef, SortBy, WindowDef, RangeSubselect, RangeFunction,
    RangeTableFunc, RangeTableFuncCol, RangeTableSample, ColumnDef, TableLikeClause, IndexElem,
    DefElem, LockingClause, XmlSerialize, PartitionElem, PartitionSpec, PartitionBoundSpec,
    PartitionRangeDatum, SinglePartitionSpec, PartitionCmd, RangeTblEntry, RtepermissionInfo,
    RangeTblFunction, TableSampleClause, WithCheckOption, SortGroupClause, GroupingSet,
    WindowClause, RowMarkClause, WithClause, InferClause, OnConflictClause, CtesearchClause,
    CtecycleClause, CommonTableExpr, MergeWhenClause, TriggerTransition, JsonOutput,
    JsonArgument, JsonFuncExpr, JsonTablePathSpec, JsonTable, JsonTableColumn, JsonKeyValue,
    JsonParseExpr, JsonScalarExpr, JsonSerializeExpr, JsonObjectConstructor,
    JsonArrayConstructor, JsonArrayQueryConstructor, JsonAggConstructor, JsonObjectAgg,
    JsonArrayAgg, RawStmt, SetOperationStmt, ReturnStmt, PlassignStmt, ReplicaIdentityStmt,
    AlterTableCmd, ObjectWithArgs, AccessPriv, Constraint, CreateOpClassItem, StatsElem,
    FunctionParameter, InlineCodeBlock, CallContext, VacuumRelation, PublicationTable,
    PublicationObjSpec, Integer, Float, Boolean, String, BitString, List, IntList, OidList,
    AConst,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Classifier;

    /// One statement of every type in the table.
    const EXAMPLES: &[(&str, &str)] = &[
        ("InsertStmt", "INSERT INTO t VALUES (1)"),
        ("DeleteStmt", "DELETE FROM t WHERE id = 1"),
        ("UpdateStmt", "UPDATE t SET a = 1 WHERE id = 1"),
        (
            "MergeStmt",
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DO NOTHING",
        ),
        ("SelectStmt", "SELECT 1"),
        ("CreateSchemaStmt", "CREATE SCHEMA s"),
        ("AlterTableStmt", "ALTER TABLE t ADD COLUMN b int"),
        ("AlterCollationStmt", "ALTER COLLATION c REFRESH VERSION"),
        ("AlterDomainStmt", "ALTER DOMAIN d SET NOT NULL"),
        ("GrantStmt", "GRANT SELECT ON t TO r"),
        ("GrantRoleStmt", "GRANT admin TO r"),
        (
            "AlterDefaultPrivilegesStmt",
            "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO r",
        ),
        ("CopyStmt", "COPY t TO STDOUT"),
        ("VariableSetStmt", "SET work_mem = '4MB'"),
        ("VariableShowStmt", "SHOW work_mem"),
        ("CreateStmt", "CREATE TABLE t (a int)"),
        (
            "CreateTableSpaceStmt",
            "CREATE TABLESPACE ts LOCATION '/tmp/ts'",
        ),
        ("DropTableSpaceStmt", "DROP TABLESPACE ts"),
        (
            "AlterTableSpaceOptionsStmt",
            "ALTER TABLESPACE ts SET (seq_page_cost = 1)",
        ),
        (
            "AlterTableMoveAllStmt",
            "ALTER TABLE ALL IN TABLESPACE ts SET TABLESPACE ts2",
        ),
        ("CreateExtensionStmt", "CREATE EXTENSION dblink"),
        ("AlterExtensionStmt", "ALTER EXTENSION dblink UPDATE"),
        (
            "AlterExtensionContentsStmt",
            "ALTER EXTENSION e ADD TABLE t",
        ),
        ("CreateFdwStmt", "CREATE FOREIGN DATA WRAPPER w"),
        ("AlterFdwStmt", "ALTER FOREIGN DATA WRAPPER w NO VALIDATOR"),
        (
            "CreateForeignServerStmt",
            "CREATE SERVER s FOREIGN DATA WRAPPER w",
        ),
        (
            "AlterForeignServerStmt",
            "ALTER SERVER s OPTIONS (host 'h')",
        ),
        (
            "CreateForeignTableStmt",
            "CREATE FOREIGN TABLE f (a int) SERVER s",
        ),
        (
            "CreateUserMappingStmt",
            "CREATE USER MAPPING FOR r SERVER s",
        ),
        (
            "AlterUserMappingStmt",
            "ALTER USER MAPPING FOR r SERVER s OPTIONS (password 'p')",
        ),
        ("DropUserMappingStmt", "DROP USER MAPPING FOR r SERVER s"),
        (
            "ImportForeignSchemaStmt",
            "IMPORT FOREIGN SCHEMA p FROM SERVER s INTO l",
        ),
        ("CreatePolicyStmt", "CREATE POLICY p ON t USING (true)"),
        ("AlterPolicyStmt", "ALTER POLICY p ON t USING (false)"),
        (
            "CreateAmStmt",
            "CREATE ACCESS METHOD a TYPE INDEX HANDLER h",
        ),
        (
            "CreateTrigStmt",
            "CREATE TRIGGER g BEFORE INSERT ON t EXECUTE FUNCTION f()",
        ),
        (
            "CreateEventTrigStmt",
            "CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()",
        ),
        ("AlterEventTrigStmt", "ALTER EVENT TRIGGER e DISABLE"),
        ("CreatePlangStmt", "CREATE LANGUAGE l HANDLER h"),
        ("CreateRoleStmt", "CREATE ROLE r"),
        ("AlterRoleStmt", "ALTER ROLE r SUPERUSER"),
        ("AlterRoleSetStmt", "ALTER ROLE r SET work_mem = '1MB'"),
        ("DropRoleStmt", "DROP ROLE r"),
        ("CreateSeqStmt", "CREATE SEQUENCE q"),
        ("AlterSeqStmt", "ALTER SEQUENCE q RESTART"),
        (
            "DefineStmt",
            "CREATE OPERATOR ~~~ (RIGHTARG = text, FUNCTION = pg_read_file)",
        ),
        ("CreateDomainStmt", "CREATE DOMAIN d AS int"),
        (
            "CreateOpClassStmt",
            "CREATE OPERATOR CLASS c FOR TYPE int USING btree AS OPERATOR 1 <",
        ),
        ("CreateOpFamilyStmt", "CREATE OPERATOR FAMILY f USING btree"),
        (
            "AlterOpFamilyStmt",
            "ALTER OPERATOR FAMILY f USING btree ADD OPERATOR 1 < (int, int)",
        ),
        ("DropStmt", "DROP TABLE t"),
        ("TruncateStmt", "TRUNCATE t"),
        ("CommentStmt", "COMMENT ON TABLE t IS 'x'"),
        ("SecLabelStmt", "SECURITY LABEL ON TABLE t IS 'x'"),
        ("DeclareCursorStmt", "DECLARE c CURSOR FOR SELECT 1"),
        ("ClosePortalStmt", "CLOSE c"),
        ("FetchStmt", "FETCH 1 FROM c"),
        ("IndexStmt", "CREATE INDEX i ON t (a)"),
        ("CreateStatsStmt", "CREATE STATISTICS st ON a, b FROM t"),
        ("AlterStatsStmt", "ALTER STATISTICS st SET STATISTICS 10"),
        (
            "CreateFunctionStmt",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        ),
        ("AlterFunctionStmt", "ALTER FUNCTION f() SECURITY DEFINER"),
        ("DoStmt", "DO $$BEGIN END$$"),
        ("CallStmt", "CALL p()"),
        ("RenameStmt", "ALTER TABLE t RENAME TO u"),
        (
            "AlterObjectDependsStmt",
            "ALTER FUNCTION f() DEPENDS ON EXTENSION e",
        ),
        ("AlterObjectSchemaStmt", "ALTER TABLE t SET SCHEMA s"),
        ("AlterOwnerStmt", "ALTER FUNCTION f() OWNER TO r"),
        (
            "AlterOperatorStmt",
            "ALTER OPERATOR ~~~ (NONE, text) SET (RESTRICT = NONE)",
        ),
        ("AlterTypeStmt", "ALTER TYPE ty SET (STORAGE = plain)"),
        (
            "RuleStmt",
            "CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING",
        ),
        ("NotifyStmt", "NOTIFY ch"),
        ("ListenStmt", "LISTEN ch"),
        ("UnlistenStmt", "UNLISTEN ch"),
        ("TransactionStmt", "COMMIT"),
        ("CompositeTypeStmt", "CREATE TYPE ty AS (a int)"),
        ("CreateEnumStmt", "CREATE TYPE e AS ENUM ('a')"),
        ("CreateRangeStmt", "CREATE TYPE r AS RANGE (SUBTYPE = int)"),
        ("AlterEnumStmt", "ALTER TYPE e ADD VALUE 'b'"),
        ("ViewStmt", "CREATE VIEW v AS SELECT 1"),
        ("LoadStmt", "LOAD 'auto_explain'"),
        ("CreatedbStmt", "CREATE DATABASE d"),
        ("AlterDatabaseStmt", "ALTER DATABASE d CONNECTION LIMIT 1"),
        (
            "AlterDatabaseRefreshCollStmt",
            "ALTER DATABASE d REFRESH COLLATION VERSION",
        ),
        (
            "AlterDatabaseSetStmt",
            "ALTER DATABASE d SET work_mem = '1MB'",
        ),
        ("DropdbStmt", "DROP DATABASE d"),
        ("AlterSystemStmt", "ALTER SYSTEM SET work_mem = '1MB'"),
        ("ClusterStmt", "CLUSTER t USING i"),
        ("VacuumStmt", "VACUUM t"),
        ("ExplainStmt", "EXPLAIN SELECT 1"),
        ("CreateTableAsStmt", "CREATE TABLE u AS SELECT 1"),
        ("RefreshMatViewStmt", "REFRESH MATERIALIZED VIEW m"),
        ("CheckPointStmt", "CHECKPOINT"),
        ("DiscardStmt", "DISCARD ALL"),
        ("LockStmt", "LOCK TABLE t"),
        ("ConstraintsSetStmt", "SET CONSTRAINTS ALL DEFERRED"),
        ("ReindexStmt", "REINDEX TABLE t"),
        (
            "CreateConversionStmt",
            "CREATE CONVERSION c FOR 'LATIN1' TO 'UTF8' FROM f",
        ),
        (
            "CreateCastStmt",
            "CREATE CAST (int AS text) WITH FUNCTION f(int)",
        ),
        (
            "CreateTransformStmt",
            "CREATE TRANSFORM FOR int LANGUAGE l (FROM SQL WITH FUNCTION f(internal))",
        ),
        ("PrepareStmt", "PREPARE q AS SELECT 1"),
        ("ExecuteStmt", "EXECUTE q"),
        ("DeallocateStmt", "DEALLOCATE q"),
        ("DropOwnedStmt", "DROP OWNED BY r"),
        ("ReassignOwnedStmt", "REASSIGN OWNED BY r TO s"),
        (
            "AlterTsdictionaryStmt",
            "ALTER TEXT SEARCH DICTIONARY d (StopWords = english)",
        ),
        (
            "AlterTsconfigurationStmt",
            "ALTER TEXT SEARCH CONFIGURATION c DROP MAPPING FOR word",
        ),
        (
            "CreatePublicationStmt",
            "CREATE PUBLICATION p FOR ALL TABLES",
        ),
        ("AlterPublicationStmt", "ALTER PUBLICATION p ADD TABLE t"),
        (
            "CreateSubscriptionStmt",
            "CREATE SUBSCRIPTION s CONNECTION 'host=h' PUBLICATION p",
        ),
        ("AlterSubscriptionStmt", "ALTER SUBSCRIPTION s DISABLE"),
        ("DropSubscriptionStmt", "DROP SUBSCRIPTION s"),
    ];

    #[test]
    fn every_statement_type_has_an_example_that_classifies_as_the_table_says() {
        let classifier = Classifier::default();
        let mut seen = std::collections::BTreeSet::new();
        for (node, sql) in EXAMPLES {
            let parsed = pg_query::parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            let [raw] = parsed.protobuf.stmts.as_slice() else {
                panic!("{sql}: not one statement");
            };
            let typed = raw
                .stmt
                .as_ref()
                .and_then(|s| s.node.as_ref())
                .and_then(statement_type_of)
                .unwrap_or_else(|| panic!("{sql}: not a statement type"));
            assert_eq!(typed.node, *node, "{sql} parses as another type");
            let row = statement_type(node).unwrap();
            assert_eq!(typed, row);
            let c = classifier.classify(sql).unwrap().remove(0);
            assert!(
                c.class >= row.class,
                "{sql}: {:?} below {:?}",
                c.class,
                row.class
            );
            assert!(c.classes.contains(&row.class), "{sql}: {:?}", c.classes);
            if !row.kind.is_empty() {
                assert!(c.has_kind(row.kind), "{sql}: kinds {:?}", c.kinds);
            }
            assert_eq!(
                c.has_kind("dynamic"),
                row.dynamic,
                "{sql}: kinds {:?}",
                c.kinds
            );
            seen.insert(*node);
        }
        let missing: Vec<_> = STATEMENT_TYPES
            .iter()
            .map(|t| t.node)
            .filter(|n| !seen.contains(n))
            .collect();
        assert!(
            missing.is_empty(),
            "statement types without an example: {missing:?}"
        );
        assert_eq!(seen.len(), STATEMENT_TYPES.len());
    }

    #[test]
    fn the_classes_statements_fall_into_are_as_documented() {
        // Spot checks of the table's decisions that matter for rules.
        let classifier = Classifier::default();
        let class = |sql: &str| classifier.classify(sql).unwrap().remove(0).class;
        assert_eq!(class("DROP USER MAPPING FOR r SERVER s"), Class::Ddl);
        assert_eq!(
            class("ALTER USER MAPPING FOR r SERVER s OPTIONS (password 'p')"),
            Class::Admin
        );
        assert_eq!(class("CREATE LANGUAGE l HANDLER h"), Class::Admin);
        assert_eq!(class("DISCARD ALL"), Class::Read);
        assert_eq!(class("COPY t FROM PROGRAM 'id'"), Class::Admin);
    }
}
