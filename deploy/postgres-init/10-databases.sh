#!/bin/sh
# Runs once, when the postgres volume is first initialised: the role the services connect as, the app
# database and Optuna's own database (Optuna owns its tables and migrations: never one database for both).
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v app_password="${APP_DB_PASSWORD:?set APP_DB_PASSWORD, the password of role soce}" <<'SQL'
CREATE ROLE soce LOGIN PASSWORD :'app_password';
CREATE DATABASE soce OWNER soce;
CREATE DATABASE optuna OWNER soce;
SQL
