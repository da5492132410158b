/* corecast web client: see web/README or docs */
