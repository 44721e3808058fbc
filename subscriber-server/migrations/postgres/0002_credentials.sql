-- Optional digest credentials (README "Database contract"): one row per user name and realm,
-- HA1 = H(username ":" realm ":" password) in lowercase hex (RFC 2617 §3.2.2.2, RFC 8760).
-- Set with `conflist-server user set-password <username>`; an operator may provide a view.
CREATE TABLE IF NOT EXISTS conflist_credentials (
    username   TEXT NOT NULL,
    realm      TEXT NOT NULL,
    user_uri   TEXT NOT NULL,               -- address of record, e.g. sip:alice@example.com
    ha1_md5    TEXT,
    ha1_sha256 TEXT,
    PRIMARY KEY (username, realm)
);
