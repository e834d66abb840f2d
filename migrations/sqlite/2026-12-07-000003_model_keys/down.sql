DROP TABLE model_keys;
