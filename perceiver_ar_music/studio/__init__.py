"""The studio: `perceiver-music serve`, a page in the browser to continue primers take by take.

- `jobs`: the one-at-a-time job queue (one generation per process, the rest wait in line);
- `takes`: the output folder: takes and uploaded primers as files, served only by name;
- `settings`: the page's generation settings, parsed and checked by `generate`'s own parser;
- `engine`: the loaded model, primers, sampling with live progress, writing a take;
- `server`: the HTTP layer (the standard library's ThreadingHTTPServer) and its routes;
- `static/`: the page (HTML, CSS and a script, no external resources).
"""
