//! Where a MySQL result's columns come from, read from the query: MariaDB describes a column
//! of a derived table, a CTE or a view by that relation's name and the name the column has
//! there (`SELECT n FROM (SELECT full_name AS n FROM customers) x` is column `n` of table
//! `x`), so a masking rule on `customers.full_name` cannot be checked against what the
//! server reports. [`mysql_lineage`] follows each output column through derived tables,
//! CTEs, set operations and expressions to the base-table columns its value is made of.

use std::collections::HashMap;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement,
    TableAlias, TableFactor, TableWithJoins, visit_expressions,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

use crate::MySqlMode;

/// Output columns: (name, folded to lower case; the base columns its value is made of,
/// `[database.]table.column`).
pub type Lineage = Vec<(String, Vec<String>)>;

/// How deep derived tables and CTEs are followed.
const MAX_DEPTH: usize = 32;

/// The lineage of the result columns of the queries in `sql` (several statements: every
/// result's columns), read as a server in `mode` reads it; `database` qualifies unqualified
/// table names. Only columns made of at least one base-table column are listed (a base
/// table's own columns as well: `SELECT full_name AS n FROM customers` lists `n`). Empty when
/// the text cannot be parsed.
pub fn mysql_lineage(sql: &str, mode: MySqlMode, database: Option<&str>) -> Lineage {
    let database = database.map(str::to_owned);
    let run = move |sql: &str| -> Result<Lineage, crate::Unparsed> {
        let text = crate::mysql::rewrite(sql, mode)?;
        let statements = Parser::parse_sql(&MySqlDialect {}, &text)
            .map_err(|e| crate::Unparsed::new(e.to_string()))?;
        let reader = Reader {
            database: database.as_deref(),
        };
        let mut out = Lineage::new();
        for statement in &statements {
            if let Statement::Query(q) = statement {
                out.extend(reader.query(q, &HashMap::new(), 0));
            }
        }
        out.retain(|(_, sources)| !sources.is_empty());
        Ok(out)
    };
    if sql.len() <= crate::stack::INLINE_PARSE {
        return run(sql).unwrap_or_default();
    }
    crate::stack::parse_safely(sql, run).unwrap_or_default()
}

/// A relation in a `FROM`: a base table (`[database.]table`), or a derived table or CTE
/// whose columns are known.
#[derive(Clone)]
enum Relation {
    Base(String),
    Derived(Lineage),
}

struct Reader<'a> {
    database: Option<&'a str>,
}

fn fold(s: &str) -> String {
    s.to_lowercase()
}

/// `columns` renamed by an alias's column list (`AS x (a, b)`), by position.
fn renamed(mut columns: Lineage, alias: Option<&TableAlias>) -> Lineage {
    if let Some(alias) = alias {
        for (column, name) in columns.iter_mut().zip(&alias.columns) {
            column.0 = fold(&name.name.value);
        }
    }
    columns
}

impl Reader<'_> {
    fn query(&self, q: &Query, ctes: &HashMap<String, Lineage>, depth: usize) -> Lineage {
        if depth > MAX_DEPTH {
            return Lineage::new();
        }
        let mut env = ctes.clone();
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                let columns = self.query(&cte.query, &env, depth + 1);
                env.insert(
                    fold(&cte.alias.name.value),
                    renamed(columns, Some(&cte.alias)),
                );
            }
        }
        self.set_expr(&q.body, &env, depth)
    }

    fn set_expr(&self, body: &SetExpr, env: &HashMap<String, Lineage>, depth: usize) -> Lineage {
        match body {
            SetExpr::Select(s) => self.select(s, env, depth),
            SetExpr::Query(q) => self.query(q, env, depth + 1),
            // A column of a UNION is made of the columns at its position on both sides.
            SetExpr::SetOperation { left, right, .. } => {
                let mut columns = self.set_expr(left, env, depth + 1);
                let right = self.set_expr(right, env, depth + 1);
                for (column, (_, more)) in columns.iter_mut().zip(right) {
                    column.1.extend(more);
                }
                columns
            }
            _ => Lineage::new(),
        }
    }

    fn select(&self, s: &Select, env: &HashMap<String, Lineage>, depth: usize) -> Lineage {
        let mut scope = Vec::new();
        for from in &s.from {
            self.joined(from, env, depth, &mut scope);
        }
        let mut out = Lineage::new();
        for item in &s.projection {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let name = match e {
                        Expr::Identifier(i) => i.value.clone(),
                        Expr::CompoundIdentifier(parts) => {
                            parts.last().map(|p| p.value.clone()).unwrap_or_default()
                        }
                        other => other.to_string(),
                    };
                    out.push((fold(&name), self.sources(e, &scope, env, depth)));
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    out.push((fold(&alias.value), self.sources(expr, &scope, env, depth)));
                }
                SelectItem::ExprWithAliases { expr, aliases } => {
                    let sources = self.sources(expr, &scope, env, depth);
                    out.extend(aliases.iter().map(|a| (fold(&a.value), sources.clone())));
                }
                // A base table's columns keep their names (and the server reports them as
                // they are); a derived table's are listed.
                SelectItem::Wildcard(_) => {
                    for (_, relation) in &scope {
                        if let Relation::Derived(columns) = relation {
                            out.extend(columns.iter().cloned());
                        }
                    }
                }
                SelectItem::QualifiedWildcard(kind, _) => {
                    let name = match kind {
                        SelectItemQualifiedWildcardKind::ObjectName(name) => name
                            .0
                            .last()
                            .and_then(|p| p.as_ident())
                            .map(|i| fold(&i.value)),
                        SelectItemQualifiedWildcardKind::Expr(_) => None,
                    };
                    for (binding, relation) in &scope {
                        if let (Some(name), Relation::Derived(columns)) = (&name, relation)
                            && binding == name
                        {
                            out.extend(columns.iter().cloned());
                        }
                    }
                }
            }
        }
        out
    }

    fn joined(
        &self,
        from: &TableWithJoins,
        env: &HashMap<String, Lineage>,
        depth: usize,
        scope: &mut Vec<(String, Relation)>,
    ) {
        self.factor(&from.relation, env, depth, scope);
        for join in &from.joins {
            self.factor(&join.relation, env, depth, scope);
        }
    }

    fn factor(
        &self,
        factor: &TableFactor,
        env: &HashMap<String, Lineage>,
        depth: usize,
        scope: &mut Vec<(String, Relation)>,
    ) {
        match factor {
            TableFactor::Table { name, alias, .. } => {
                let parts: Vec<String> = name
                    .0
                    .iter()
                    .map(|p| p.as_ident().map(|i| i.value.clone()).unwrap_or_default())
                    .collect();
                let Some(table) = parts.last() else {
                    return;
                };
                let binding = alias
                    .as_ref()
                    .map(|a| fold(&a.name.value))
                    .unwrap_or_else(|| fold(table));
                let relation = match (parts.len(), env.get(&fold(table))) {
                    (1, Some(cte)) => Relation::Derived(renamed(cte.clone(), alias.as_ref())),
                    (1, None) => Relation::Base(match self.database {
                        Some(db) => format!("{db}.{table}"),
                        None => table.clone(),
                    }),
                    _ => Relation::Base(parts.join(".")),
                };
                scope.push((binding, relation));
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                let columns = self.query(subquery, env, depth + 1);
                let binding = alias
                    .as_ref()
                    .map(|a| fold(&a.name.value))
                    .unwrap_or_default();
                scope.push((binding, Relation::Derived(renamed(columns, alias.as_ref()))));
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.joined(table_with_joins, env, depth, scope),
            _ => {}
        }
    }

    /// The base columns an expression's value is made of: each column it names, resolved
    /// in `scope` (an unqualified name that more than one relation may hold counts for each
    /// of them), and every column of the subqueries in it.
    fn sources(
        &self,
        e: &Expr,
        scope: &[(String, Relation)],
        env: &HashMap<String, Lineage>,
        depth: usize,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let _ = visit_expressions(e, |x| {
            match x {
                Expr::Identifier(column) => resolve(scope, None, &column.value, &mut out),
                Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                    let n = parts.len();
                    resolve(
                        scope,
                        Some(&parts[n - 2].value),
                        &parts[n - 1].value,
                        &mut out,
                    );
                }
                Expr::Subquery(q) => {
                    for (_, sources) in self.query(q, env, depth + 1) {
                        out.extend(sources);
                    }
                }
                _ => {}
            }
            ControlFlow::<()>::Continue(())
        });
        out.sort();
        out.dedup();
        out
    }
}

/// Column `column` of relation `qualifier` (or of any relation in scope) into `out`.
fn resolve(
    scope: &[(String, Relation)],
    qualifier: Option<&str>,
    column: &str,
    out: &mut Vec<String>,
) {
    let column_folded = fold(column);
    for (binding, relation) in scope {
        if qualifier.is_some_and(|q| fold(q) != *binding) {
            continue;
        }
        match relation {
            Relation::Base(table) => out.push(format!("{table}.{column}")),
            Relation::Derived(columns) => out.extend(
                columns
                    .iter()
                    .filter(|(name, _)| *name == column_folded)
                    .flat_map(|(_, sources)| sources.iter().cloned()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lineage(sql: &str) -> Vec<(String, Vec<String>)> {
        let mut l = mysql_lineage(sql, MySqlMode::default(), Some("test"));
        l.sort();
        l
    }

    fn of(sql: &str, column: &str) -> Vec<String> {
        lineage(sql)
            .into_iter()
            .filter(|(name, _)| name == column)
            .flat_map(|(_, s)| s)
            .collect()
    }

    #[test]
    fn columns_are_followed_to_their_base_tables() {
        let full = vec!["test.customers.full_name".to_string()];
        for sql in [
            "SELECT n FROM (SELECT full_name AS n FROM customers) x",
            "SELECT x.n FROM (SELECT c.full_name AS n FROM customers c) AS x",
            "SELECT n FROM (SELECT full_name AS n FROM customers) AS customers",
            "WITH c AS (SELECT full_name AS n FROM customers) SELECT n FROM c",
            "WITH c (n) AS (SELECT full_name FROM customers) SELECT n FROM c",
            "SELECT n FROM (SELECT m AS n FROM (SELECT full_name AS m FROM customers) a) b",
            "SELECT * FROM (SELECT full_name AS n FROM customers) x",
            "SELECT x.* FROM (SELECT full_name AS n FROM customers) x",
            "SELECT n FROM (SELECT full_name FROM customers) x (n)",
        ] {
            assert_eq!(of(sql, "n"), full, "{sql}");
        }
        // Computed values, unions, subqueries: every column the value is made of.
        assert_eq!(
            of(
                "SELECT upper(n) AS u FROM (SELECT full_name AS n FROM customers) x",
                "u"
            ),
            full
        );
        assert_eq!(
            of(
                "SELECT n FROM (SELECT city AS n FROM shops UNION SELECT full_name FROM customers) x",
                "n"
            ),
            ["test.customers.full_name", "test.shops.city"]
        );
        assert_eq!(
            of("SELECT (SELECT full_name FROM customers LIMIT 1) AS n", "n"),
            full
        );
        assert_eq!(
            of(
                "SELECT n FROM (SELECT app.customers.full_name AS n FROM app.customers) x",
                "n"
            ),
            ["app.customers.full_name"]
        );
        // Ambiguous: every table that may hold it.
        assert_eq!(
            of("SELECT id AS n FROM customers JOIN orders USING (id)", "n"),
            ["test.customers.id", "test.orders.id"]
        );
        // Nothing to follow.
        assert!(lineage("SELECT 1 AS one").is_empty());
        assert!(lineage("DELETE FROM customers").is_empty());
        assert!(lineage("SELECT (").is_empty());
    }
}
