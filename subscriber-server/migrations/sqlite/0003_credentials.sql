-- SQLite twin of migrations/postgres/0002: optional digest credentials, HA1s in lowercase hex.
CREATE TABLE IF NOT EXISTS conflist_credentials (
    username   TEXT NOT NULL,
    realm      TEXT NOT NULL,
    user_uri   TEXT NOT NULL,
    ha1_md5    TEXT,
    ha1_sha256 TEXT,
    PRIMARY KEY (username, realm)
);
