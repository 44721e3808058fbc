-- Change-log rows carry the insert's wall-clock time (clock_timestamp()), not the start of
-- their transaction (now()), so a long transaction's rows are not taken as old by the
-- pruner. The log itself is created by `db install` / --migrate (directory/changelog.rs,
-- which sets the same default); this alters a log that an older version created.
DO $conflist$
BEGIN
    IF to_regclass('conflist_changes') IS NOT NULL THEN
        ALTER TABLE conflist_changes ALTER COLUMN changed_at SET DEFAULT clock_timestamp();
    END IF;
END
$conflist$;
