DROP TABLE settlement_workers;
