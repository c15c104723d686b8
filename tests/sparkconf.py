"""Spark settings for the tests' short jobs: each JVM here lives a minute and scores a few thousand rows.

The driver JVM compiles with C1 only and collects with the serial collector: a local
session plus three small jobs took 48.7 core-seconds with the JVM's defaults and 26.9
with these on this 2-core machine (C2 compiles hot code for minutes of work a test job
never does). Not a setting for real jobs: long ones need C2.
"""

from __future__ import annotations

TEST_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",  # no port to take on a shared machine
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.log.level": "ERROR",
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
}


def conf_args(conf: dict[str, str] = TEST_CONF) -> list[str]:
    """The settings as spark-submit's (and the batch command line's) `--conf KEY=VALUE` arguments."""
    return [arg for key, value in conf.items() for arg in ("--conf", f"{key}={value}")]
