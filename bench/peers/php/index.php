<?php
// Bench peer: php-fpm 8.2. GET / -> "Hello, World!\n", POST /echo -> the body.
if ($_SERVER['REQUEST_METHOD'] === 'POST' && $_SERVER['DOCUMENT_URI'] === '/echo') {
    header('Content-Type: application/octet-stream');
    $in = fopen('php://input', 'rb');
    $out = fopen('php://output', 'wb');
    stream_copy_to_stream($in, $out);
    return;
}
header('Content-Type: text/plain');
echo "Hello, World!\n";
