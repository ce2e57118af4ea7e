-- Spreadsheet formula injection (OWASP "CSV Injection"): a cell an export writes that starts with = + - @,
-- a tab or a carriage return gets a leading single quote, so a spreadsheet shows it as text instead of
-- evaluating it. A plain number (+393331112233, -5, 1.5) is left as it is: it cannot be a formula.
create function csv_cell(value text) returns text
language sql immutable parallel safe as $$
    select case when value ~ '^[=+\-@\t\r]' and value !~ '^[+-]?[0-9]+([.][0-9]+)?$'
                then '''' || value else value end
$$;
