-- A small sample dump for the demo (tools/run-manager): a shop with a few
-- items, and read/write rights on it for the demo's user 'demo', which the
-- demo creates (configure_user) before it loads this file.
CREATE DATABASE IF NOT EXISTS shop CHARACTER SET utf8mb4;
USE shop;
DROP TABLE IF EXISTS items;
CREATE TABLE items (
    id INT PRIMARY KEY,
    name VARCHAR(64) NOT NULL,
    price DECIMAL(8, 2) NOT NULL
) ENGINE=InnoDB;
INSERT INTO items (id, name, price) VALUES
    (1, 'apple', 0.40),
    (2, 'pear', 0.55),
    (3, 'plum', 0.30),
    (4, 'fig', 1.20);
GRANT SELECT, INSERT, UPDATE, DELETE ON shop.* TO 'demo'@'%';
