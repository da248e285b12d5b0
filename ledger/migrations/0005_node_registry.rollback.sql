ALTER TABLE nodes DROP COLUMN registered_by;
