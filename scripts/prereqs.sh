# Sourced by scripts/demo and scripts/test: installs the Debian packages a command needs when
# they are missing (apt-get, as root or through sudo).
#
#   install_missing demo   libclang (PostgreSQL's parser is built with bindgen), the
#                          PostgreSQL server and psql
#   install_missing test   the above, plus the servers, clients and JDKs the tests drive

install_missing() {
  local missing=()
  # portcullis-policy builds PostgreSQL's parser (libpg_query); bindgen needs libclang.
  # (libclang-cpp alone, which other packages pull in, is not enough.)
  local found="" f
  for f in /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* \
    /usr/lib/*-linux-gnu/libclang.so* /usr/lib/*-linux-gnu/libclang-[0-9]*.so*; do
    [ -e "$f" ] && found=1
  done
  [ -n "$found" ] || missing+=(libclang-dev)
  command -v cc >/dev/null 2>&1 || missing+=(build-essential)
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
  command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
  if [ "${1:-}" = "test" ]; then
    # The driver checks run Java source files (JEP 330), which needs the compiler: a JDK.
    command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
    [ -f /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-pip)
    # portcullis-mysql's tests: a throwaway MariaDB, its CLI, Connector/J and sysbench.
    [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
    command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
    [ -f /usr/share/java/mariadb-java-client.jar ] || missing+=(libmariadb-java)
    command -v sysbench >/dev/null 2>&1 || missing+=(sysbench)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    printf '\n== installing %s\n' "${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
