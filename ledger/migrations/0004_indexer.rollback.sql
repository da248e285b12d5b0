DROP TABLE chain_events, indexer_blocks, indexer_cursor;
