import pytest
import sqlglot
from sqlglot import exp

from cityos.nlq.errors import SQLValidationError
from cityos.nlq.guard import SERVING_TABLES, check_sql

OK_SQL = (
    "SELECT AVG(t.avg_speed_kmh) AS v FROM traffic_5m AS t JOIN sensors AS s "
    "ON s.sensor_id = t.sensor_id WHERE (s.zone_id = 'cologne-stb-5' OR s.zone_id IN "
    "(SELECT zone_id FROM zones WHERE parent_zone_id = 'cologne-stb-5'))"
)


def refused(sql: str) -> list[str]:
    with pytest.raises(SQLValidationError) as info:
        check_sql(sql, SERVING_TABLES, 100)
    assert info.value.errors
    return info.value.errors


def test_accepts_select_and_adds_limit() -> None:
    out = check_sql(OK_SQL, SERVING_TABLES, 100)
    assert out.endswith("LIMIT 100")
    assert check_sql("SELECT COUNT(*) FROM zones LIMIT 5", SERVING_TABLES, 100).endswith("LIMIT 5")
    assert check_sql("SELECT name FROM zones LIMIT 5000", SERVING_TABLES, 100).endswith("LIMIT 100")


def test_ctes_subqueries_and_correlation_allowed() -> None:
    check_sql(
        "WITH c AS (SELECT sensor_id, name FROM sensors) SELECT name FROM c", SERVING_TABLES, 10
    )
    check_sql("SELECT n FROM (SELECT name AS n FROM zones) AS q ORDER BY n", SERVING_TABLES, 10)
    check_sql(
        "SELECT s.name FROM sensors s WHERE EXISTS (SELECT 1 FROM traffic_5m t "
        "WHERE t.sensor_id = s.sensor_id)",
        SERVING_TABLES,
        10,
    )


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM alerts WHERE status = 'resolved'",
        "DROP TABLE traffic_5m",
        "INSERT INTO alerts SELECT alert_id FROM alerts",
        "UPDATE signal_phases SET green_s = 99",
        "CREATE TABLE x AS SELECT name FROM zones",
        "SELECT name FROM zones; DROP TABLE zones",
        "SELECT name FROM zones -- harmless\n; DELETE FROM zones",
        "SELECT name FROM zones /* ; */ ; DROP TABLE zones",
        "SELECT name FROM zones UNION SELECT token FROM api_tokens",
        "SELECT name FROM nlq_tokens",
        "SELECT secret FROM sensors",
        "SELECT x.name FROM sensors s",
        "SELECT * FROM sensors",
        "SELECT s.* FROM sensors s",
        "SELECT name FROM pg_catalog.pg_tables",
        "SELECT reflect('java.lang.Runtime', 'getRuntime') FROM zones",
        "SELECT java_method('java.lang.System', 'getenv', 'X') FROM zones",
        "SELECT input_file_name() FROM zones",
        "SELECT value FROM read_files('/etc/passwd')",
        "SELECT name INTO copy FROM zones",
        "SELECT name FROM zones LIMIT (SELECT 5)",
        "not sql at all ((",
        "",
    ],
)
def test_refuses(sql: str) -> None:
    refused(sql)


def test_injection_inside_a_literal_stays_a_literal() -> None:
    text = "Neusser Str.'; DROP TABLE traffic_5m; --"
    sql = (
        exp.select("name")
        .from_("sensors")
        .where(exp.EQ(this=exp.column("road_name"), expression=exp.Literal.string(text)))
        .sql("spark")
    )
    out = check_sql(sql, SERVING_TABLES, 10)
    tree = sqlglot.parse_one(out, read="spark")
    assert [lit.this for lit in tree.find_all(exp.Literal) if lit.is_string] == [text]
